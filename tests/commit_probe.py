"""`python tests/commit_probe.py tune ...`: edgetune killed at step KILL_AT after the Trainer saved
(and rotated) the checkpoint, before CommitCheckpoints marks it complete; with BEST_AT, each
evaluation's loss reads as rising from that step on, so the best checkpoint is an old one."""

import os

from edgetune.tune import callbacks
from edgetune.tune.trainer import SupervisedLogitsTrainer

commit = callbacks.CommitCheckpoints.on_save
evaluate = SupervisedLogitsTrainer.evaluate


def on_save(self, args, state, control, **kwargs):
    if state.global_step == int(os.environ["KILL_AT"]):
        os._exit(9)
    return commit(self, args, state, control, **kwargs)


def rising(self, *args, **kwargs):
    metrics = evaluate(self, *args, **kwargs)
    metrics["eval_loss"] = 1.0 + abs(self.state.global_step - int(os.environ["BEST_AT"]))
    return metrics


callbacks.CommitCheckpoints.on_save = on_save
if "BEST_AT" in os.environ:
    SupervisedLogitsTrainer.evaluate = rising
from edgetune.cli import main  # noqa: E402

main()
