"""Run `edgetune tune` under a launcher and record, on every rank, a digest of the trainable weights
after each optimizer step (in $RANK_PROBE_DIR/rank<N>.json). Ranks that average their gradients hold
identical weights after every step; ranks that train alone drift apart from step 1.

Rank 1 also writes its share of each checkpoint (its RNG state) late, so a checkpoint marked complete
before every rank finished writing it shows up as a marker older than that file."""

import hashlib
import json
import os
import sys
import time
from pathlib import Path

from transformers import Trainer, TrainerCallback

import edgetune.tune.trainer as tune_trainer
from edgetune.cli import main


class WeightDigests(TrainerCallback):
    def __init__(self):
        self.digests: list[str] = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        h = hashlib.sha256()
        for name, p in sorted(model.named_parameters()):
            if p.requires_grad:
                h.update(name.encode())
                h.update(p.detach().float().cpu().numpy().tobytes())
        self.digests.append(h.hexdigest())
        out = Path(os.environ["RANK_PROBE_DIR"]) / f"rank{os.environ.get('RANK', '0')}.json"
        out.write_text(json.dumps({"steps": self.digests}))


_save_rng_state = Trainer._save_rng_state


def late_rng_state(self, output_dir):
    if os.environ.get("RANK") == "1":
        time.sleep(1.5)
    _save_rng_state(self, output_dir)


Trainer._save_rng_state = late_rng_state
_build = tune_trainer.build_trainer


def build_with_probe(*args, **kwargs):
    trainer = _build(*args, **kwargs)
    trainer.add_callback(WeightDigests())
    return trainer


tune_trainer.build_trainer = build_with_probe  # tune() imports it when it runs
main(sys.argv[1:])  # click exits with the command's status
