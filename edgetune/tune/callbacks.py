"""Trainer callbacks: committed checkpoints, metrics.jsonl, a live progress display, the loss before
training, an overfit watch, a loss-spike watch, a stop at the first non-finite loss, and keeping
the best checkpoint."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from edgetune import strict_json
from edgetune.console import live
from edgetune.rundir import atomic_write_json, fsync_file, fsync_tree, give_modes
from edgetune.tune.distributed import wait_for_every_rank

COMPLETE = "edgetune-complete.json"


def complete_checkpoints(checkpoints: Path) -> list[Path]:
    """Checkpoints whose write finished, oldest first. One without the marker was interrupted."""
    found = []
    for path in checkpoints.glob("checkpoint-*"):
        if (path / COMPLETE).is_file() and path.name.split("-")[-1].isdigit():
            found.append(path)
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


class CommitCheckpoints(TrainerCallback):
    """After the Trainer writes checkpoint-N: fsync it, then mark it complete (the commit point).

    A crash while the Trainer writes leaves a checkpoint without the marker; resume ignores it
    and the next start removes it, so the previous checkpoint is the one chosen. Under a launcher
    every rank writes its own RNG state into the checkpoint after the main rank wrote the rest, so
    the marker waits for all of them: one written earlier committed a checkpoint that a crash could
    leave without a rank's RNG file, or with half of one.

    metrics: the run's metrics.jsonl, made durable at the same commit point (its lines are flushed
    as they come, not each fsynced: a resume keeps the lines up to the checkpoint and logs the
    steps after it again, so those are the lines that must survive a crash).
    """

    def __init__(self, metrics: Path | None = None):
        self.metrics = metrics

    def on_save(self, args, state, control, **kwargs):
        wait_for_every_rank()
        if state.is_world_process_zero:
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if self.metrics is not None and self.metrics.is_file():
                fsync_file(self.metrics)
            if ckpt.is_dir():
                # peft saves the adapter with safetensors, which makes it 0600 whatever the umask
                give_modes(ckpt)
                fsync_tree(ckpt)
                atomic_write_json(ckpt / COMPLETE, {"step": state.global_step, "time": time.time()})
        return control


class MetricsLog(TrainerCallback):
    """Every log event as one JSON line: step, epoch, loss or eval_loss, lr, tokens seen, tok/s.

    Each line is flushed (a `tail -f` sees it); the file is fsynced with each committed checkpoint
    (CommitCheckpoints) and at the end of training, not once a step: on a GPU a step can take
    milliseconds, and an fsync on a network disk more than that."""

    def __init__(self, path: Path):
        self.path = path
        self.start = time.time()
        self.last = (self.start, 0)

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.time()
        self.last = (self.start, state.num_input_tokens_seen)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        now = time.time()
        tokens = state.num_input_tokens_seen
        record: dict[str, Any] = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        record.update({k: v for k, v in logs.items() if isinstance(v, (int, float)) and k != "epoch"})
        if "loss" in logs:
            dt = now - self.last[0]
            record["tokens_seen"] = tokens
            record["tok_s"] = round((tokens - self.last[1]) / dt, 1) if dt > 0 else None
            self.last = (now, tokens)
        record["elapsed_s"] = round(now - self.start, 2)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(strict_json.dumps(record) + "\n")

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.path.is_file():
            fsync_file(self.path)


def truncate_metrics(path: Path, after_step: int) -> None:
    """On resume: forget what was logged after the checkpoint, since those steps run again."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the crash
        step = record.get("step", 0) if isinstance(record, dict) else None
        if isinstance(step, (int, float)) and step <= after_step:
            kept.append(line)  # anything else is no record of ours: dropped with the replayed steps
    from edgetune.rundir import atomic_write_text

    atomic_write_text(path, "".join(line + "\n" for line in kept))


class InitialEval(TrainerCallback):
    """Hands the step-0 validation loss (TrainingArguments.eval_on_start) to `record`, once."""

    def __init__(self, record):
        self.record = record
        self.done = False

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not self.done and state.global_step == 0 and metrics and "eval_loss" in metrics:
            self.done = True
            self.record(float(metrics["eval_loss"]))


class SaveTheBest(TrainerCallback):
    """A checkpoint at every evaluation that improves the validation loss. The Trainer saves every
    save_steps and can only ship a saved checkpoint: with eval_steps 2 and save_steps 4, the best
    adapter (step 2) was never written and the last one shipped in its place."""

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        loss = (metrics or {}).get("eval_loss")
        best = state.best_metric if state.best_metric is not None else float("inf")
        if state.global_step > 0 and loss is not None and loss < best:  # the Trainer records it next
            control.should_save = True


class OverfitWatch(TrainerCallback):
    """Warn once when validation loss rises twice in a row, by more than noise (MIN_RISE), while
    training loss keeps falling (5.714 -> 5.719 on two validation rows was called overfitting)."""

    MIN_RISE = 0.01

    def __init__(self, warn):
        self.warn = warn
        self.evals: list[tuple[int, float]] = []
        self.train_losses: list[float] = []
        self.train_at_eval: list[float] = []
        self.warned = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.train_losses.append(float(logs["loss"]))

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not metrics or "eval_loss" not in metrics:
            return
        recent = self.train_losses[-max(1, args.eval_steps) :]
        self.evals.append((state.global_step, float(metrics["eval_loss"])))
        self.train_at_eval.append(sum(recent) / len(recent) if recent else float("nan"))
        if self.warned or len(self.evals) < 3:
            return
        (_, v0), (_, v1), (_, v2) = self.evals[-3:]
        t0, t1, t2 = self.train_at_eval[-3:]
        if v2 > v1 > v0 and v2 > v0 * (1 + self.MIN_RISE) and t2 < t1 < t0:
            self.warned = True
            trained = [e for e in self.evals if e[0] > 0]  # step 0 is the base model: no adapter
            best_step, best = min(trained, key=lambda e: e[1])
            before = next((loss for step, loss in self.evals if step == 0), None)
            kept = (
                f"The best adapter so far (step {best_step}) is kept unless a later one beats it"
                if before is None or best < before
                else f"No adapter beat the model before training ({best:.4f} against {before:.4f})"
            )
            self.warn(
                f"validation loss is rising ({v0:.4f} -> {v2:.4f}) while training loss falls "
                f"({t0:.4f} -> {t2:.4f}): the model is overfitting. {kept}; consider fewer epochs, "
                "a lower train.lr or more data."
            )


class LossSpikeWatch(TrainerCallback):
    """Warn once when the training loss climbs past SPIKE times its first step's, the untrained
    model's: updates that large damage what the base model knew (train.lr 1e-2 took the demo from
    1.41 to 4.99 by step 8, and only the validation loss, still falling from there, was watched)."""

    SPIKE = 2.0

    def __init__(self, warn, lr: float):
        self.warn, self.lr = warn, lr
        self.above = 0  # logs in a row past SPIKE times the first: one noisy batch is not a climb
        self.warned = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if self.warned or not isinstance(loss, (int, float)) or not math.isfinite(loss):
            return
        # the run's first logged loss (a resumed run's history holds it), not this process's first
        first = next((e["loss"] for e in state.log_history if isinstance(e.get("loss"), (int, float))), None)
        if first is None or first <= 0 or state.global_step <= 1:
            return
        self.above = self.above + 1 if loss > self.SPIKE * first else 0
        if self.above >= 2:
            self.warned = True
            usual = "; 1e-4..1e-3 is the usual range" if self.lr > 1e-3 else ""
            self.warn(
                f"training loss {loss:.4f} at step {state.global_step} is {loss / first:.1f}x the first "
                f"step's ({first:.4f}): train.lr {self.lr:g} may be too high and damaging what the base "
                f"model knew (bench's forgetting probe measures it){usual}"
            )


class StopOnNonFinite(TrainerCallback):
    """Stop at the first loss, gradient norm or validation loss that is not finite: the weights
    are NaN from there on, every later step is wasted, and the Trainer's own logging would have
    shown the mean of the earlier losses in its place (logging_nan_inf_filter, turned off). An
    evaluation's loss comes through on_log too (Trainer.evaluate logs its metrics). Every rank logs the same gathered loss and norm, so the ranks stop together."""

    KEYS = ("loss", "grad_norm", "eval_loss")

    def __init__(self):
        self.found: tuple[int, str, float] | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in self.KEYS:
            value = (logs or {}).get(key)
            if self.found is None and isinstance(value, (int, float)) and not math.isfinite(value):
                self.found = (state.global_step, key, float(value))
        if self.found is not None:  # no checkpoint of NaN weights (a resume would finish the run with it)
            control.should_training_stop = True
            control.should_save = control.should_evaluate = False
        return control


class Progress(TrainerCallback):
    """A live line: step/total, loss, validation loss, tokens/s, ETA (rich, on stderr). Where
    stderr is not a terminal (a Makefile's log, CI) rich would draw nothing until the end: a
    plain line is printed instead every LOG_EVERY_S seconds and at each evaluation."""

    LOG_EVERY_S = 30.0

    def __init__(self, console):
        self.console = console
        self.progress = None
        self.task = None
        self.fields = {"loss": "-", "val": "-", "tok_s": "-"}
        self.tokens = (time.time(), 0)
        self.log_lines = False
        self.started = (time.time(), 0)
        self.printed, self.printed_step = 0.0, -1

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.tokens = (time.time(), state.num_input_tokens_seen)
        self.started = (time.time(), state.global_step)
        if not live(self.console):
            self.log_lines, self.printed = True, time.time()
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]tune[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  val {task.fields[val]}  {task.fields[tok_s]} tok/s"),
            TimeRemainingColumn(compact=True),
            console=self.console,
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(
            "tune", total=state.max_steps, completed=state.global_step, **self.fields
        )

    def _line(self, state) -> None:
        """step/total, the fields, elapsed and ETA as one plain line."""
        elapsed = time.time() - self.started[0]
        done = state.global_step - self.started[1]
        left = (state.max_steps - state.global_step) * elapsed / done if done > 0 else None
        eta = f"  ETA {_clock(left)}" if left is not None and state.global_step < state.max_steps else ""
        self.console.print(
            f"tune {state.global_step}/{state.max_steps}  loss {self.fields['loss']}  val {self.fields['val']}  "
            f"{self.fields['tok_s']} tok/s  {_clock(elapsed)}{eta}",
            highlight=False,
        )
        self.printed, self.printed_step = time.time(), state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is None and not self.log_lines:
            return
        now = time.time()
        dt = now - self.tokens[0]
        if dt >= 2.0:
            self.fields["tok_s"] = f"{(state.num_input_tokens_seen - self.tokens[1]) / dt:.0f}"
            self.tokens = (now, state.num_input_tokens_seen)
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step, **self.fields)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if (self.progress is None and not self.log_lines) or not logs:
            return
        if "loss" in logs:
            self.fields["loss"] = f"{logs['loss']:.4f}"
        if "eval_loss" in logs:
            self.fields["val"] = f"{logs['eval_loss']:.4f}"
        if self.progress is not None:
            self.progress.update(self.task, **self.fields)
        elif "eval_loss" in logs and state.global_step > 0:  # the validation loss as it comes
            self._line(state)
        elif "loss" in logs and time.time() - self.printed >= self.LOG_EVERY_S:  # the step's own loss
            self._line(state)

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step, **self.fields)
            self.progress.stop()
            self.progress = None
        elif self.log_lines:
            if self.printed_step != state.global_step:  # the last evaluation's line may have said it
                self._line(state)
            self.log_lines = False


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"
