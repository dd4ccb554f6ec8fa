"""What tune checks before it trains: the checkpoint a resume starts from, and the data it got
(problems that stop it, and doubts it warns about but trains through)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from edgetune.config import Recipe
from edgetune.cores import more_than_the_cores
from edgetune.data.quality import counted
from edgetune.errors import InputError


def check_checkpoint(checkpoint: Path) -> None:
    """The checkpoint resume starts from, opened as the Trainer will open it: a damaged one is named
    before the model loads (removing it resumes from the one before)."""
    from edgetune.validate import check_adapter_dir, check_json

    state = checkpoint / "trainer_state.json"
    if not state.is_file():
        raise InputError(
            f"{checkpoint}: no trainer_state.json; remove this checkpoint to resume from the one before"
        )
    step = check_json(state).get("global_step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise InputError(
            f"{state}: global_step is {step!r}, not a step count; remove {checkpoint.name} to resume"
        )
    if (checkpoint / "adapter_config.json").is_file():  # FSDP's sharded state is checked by torch
        check_adapter_dir(checkpoint)


def planned_steps(recipe: Recipe, examples: int) -> int:
    """The optimizer steps a run will take: max_steps, or its epochs over the training examples."""
    import math

    from edgetune.tune.distributed import world_size

    t = recipe.train
    if t.max_steps > 0:
        return t.max_steps
    per_epoch = max(math.ceil(math.ceil(examples / (t.batch_size * world_size())) / t.grad_accum), 1)
    return math.ceil(per_epoch * t.epochs)


# validation examples past which each evaluation costs more than it tells: 5,000 (10% of 50k rows)
# took an estimated 12-15 minutes per evaluation of SmolLM2-135M on this project's 2-core CPU
LARGE_VALID = 2000


FEW_VALID = 20  # below this, a validation loss that rises or falls 1% says little


def warn_about_warmup(recipe: Recipe, steps: int, examples: int, warn) -> None:
    """A warmup as long as the run, or longer than an epoch: the rate starts at 0 and climbs to
    train.lr over ceil(warmup_ratio x steps) steps. `train.max_steps 1` took its one step at 0 and
    changed nothing; `train.epochs 1e9` planned 3e8 warmup steps, trained at a rate of 1e-12 until
    early stopping ended it, and exited 0."""
    import math

    t = recipe.train
    warmup = math.ceil(t.warmup_ratio * steps)
    if not warmup:
        return
    if warmup >= steps:
        warn(
            f"train.warmup_ratio {t.warmup_ratio:g} of {steps} steps: the whole run warms up, its "
            "first step at a learning rate of 0, none at train.lr (train.warmup_ratio=0 for a short run)"
        )
        return
    epoch = planned_steps(replace(recipe, train=replace(t, max_steps=-1, epochs=1.0)), examples)
    if t.early_stopping_patience and warmup > 2 * epoch:
        warn(
            f"the learning-rate warmup lasts {warmup:,} steps ({t.warmup_ratio:g} of {steps:,}), "
            f"{warmup / epoch:,.0f} epochs: early stopping may end the run long before the rate "
            "reaches train.lr"
        )


def warn_about_data(recipe: Recipe, data, warn) -> None:
    train = data.encoded["train"].examples
    if skipped := data.splits.skipped_rows:  # data.skip_bad_rows: on, but each one is still said
        warn(
            f"{len(skipped)} bad row{'s' * (len(skipped) > 1)} skipped (data.skip_bad_rows), e.g. {skipped[0]}"
        )
    ov = data.splits.overlap
    leaked = ov.get("exact", 0) + ov.get("same_input", 0) + ov.get("near", 0)
    if leaked and not recipe.data.drop_overlap:  # the held-out scores measure recall of trained rows
        warn(
            f"{leaked} training examples ask what a held-out row asks and are trained on (data.drop_overlap "
            f"is off), e.g. {data.splits.overlap_pairs[0]}: validation loss and bench scores overstate the model"
        )
    for name, enc in data.encoded.items():
        if enc.dropped:
            warn(f"{enc.dropped} {name} examples dropped, e.g. {enc.dropped_examples[0]}")
    from edgetune.data.prepare import special_token_text, unused_system_prompt

    for said in (unused_system_prompt(data, recipe.data.system_prompt), special_token_text(data)):
        if said:
            warn(said)
    enc = data.encoded["train"]
    if enc.missing_eos:  # truncation cut the stop token off: the model learns not to stop
        warn(
            f"{enc.missing_eos} of {len(train)} training examples learn a reply that does not end in EOS "
            f"(e.g. {enc.missing_eos_examples[0]}; truncated at data.max_seq_len {recipe.data.max_seq_len}?): "
            "the model may not learn to stop"
        )
    t = recipe.train
    if said := more_than_the_cores("train.threads", t.threads):
        warn(said)
    from edgetune.tune.distributed import world_size

    processes = world_size()
    if t.batch_size * t.grad_accum * processes > len(train):
        times = f" x {processes} processes" if processes > 1 else ""
        warn(
            f"train.batch_size x train.grad_accum{times} = {t.batch_size * t.grad_accum * processes} is "
            f"more than the {len(train)} training examples: every step repeats examples"
        )
    if t.max_steps > 0 and t.epochs != type(t)().epochs:  # set on purpose, in the recipe or by --set
        warn(f"train.epochs {t.epochs:g} is not used: train.max_steps {t.max_steps} sets the run's length")
    steps = planned_steps(recipe, len(train))
    warn_about_warmup(recipe, steps, len(train), warn)
    if data.encoded["valid"].examples and 0 < steps < t.eval_steps:
        length = (
            f"train.max_steps {t.max_steps}"
            if t.max_steps > 0
            else f"the {steps} steps of train.epochs {t.epochs:g}"
        )
        warn(
            f"train.eval_steps {t.eval_steps} > {length}: no evaluation after the "
            "start, so no early stopping and no best checkpoint"
        )
    valid = len(data.encoded["valid"].examples)
    if valid > LARGE_VALID:  # eval_on_start and every eval_steps score all of it
        warn(
            f"{valid} validation examples: every evaluation (before training and each train.eval_steps) "
            f"scores them all, on a CPU minutes each; a few hundred measure the loss well enough "
            "(lower data.valid_fraction, or give data.valid)"
        )
    from edgetune.bench.metrics import answer_form_warnings

    for warning in data.splits.quality.warnings():
        warn(warning)
    for warning in answer_form_warnings(recipe.bench.metric, data.splits, recipe.bench.max_examples):
        warn(warning)
    from edgetune.bench.accuracy import held_out_answers_warning

    if said := held_out_answers_warning(data, recipe.bench):
        warn(said)
    if len(train) < 100:
        warn(
            f"only {counted(len(train), 'training example')}: expect overfitting; 500+ clean examples work best"
        )
    if recipe.train.lr > 1e-3:
        warn(
            f"train.lr={recipe.train.lr:g} is high for LoRA fine-tuning and risks catastrophic forgetting; "
            "1e-4..1e-3 is the usual range"
        )
    if not data.encoded["valid"].examples:
        warn("no validation examples: no early stopping, and the last adapter is kept rather than the best")
    elif valid < FEW_VALID:
        warn(
            f"only {counted(valid, 'validation example')}: early stopping and the best checkpoint rest on "
            f"a loss that noise moves (give data.valid, or a larger data.valid_fraction, for {FEW_VALID}+)"
        )


def refuse_divergence(trainer, recipe: Recipe, run_dir: Path, main: bool) -> None:
    """After training: a run that StopOnNonFinite stopped is an error, recorded in the manifest;
    no adapter is written from weights that are no longer numbers."""
    from edgetune.rundir import update_manifest
    from edgetune.tune.callbacks import StopOnNonFinite

    stop = next((c for c in trainer.callback_handler.callbacks if isinstance(c, StopOnNonFinite)), None)
    if stop is None or stop.found is None:
        return
    step, key, value = stop.found
    t = recipe.train
    what = {"loss": "the training loss", "grad_norm": "the gradient norm", "eval_loss": "the validation loss"}
    if step == 0:
        cause = "the base model's own outputs overflow" + (
            ": try train.precision=fp32" if trainer.args.bf16 else ""
        )
    else:
        import math

        hints = [f"a lower train.lr (it was {t.lr:g})"]
        scale = t.lora.alpha / (math.sqrt(t.lora.r) if t.lora.rslora else t.lora.r)
        if scale > 16:  # the adapter's update is scaled by alpha / r: 2 is usual
            hints.insert(
                0, f"a lower train.lora.alpha (alpha / r scales the update {scale:g}x; 1 to 4 is usual)"
            )
        if t.weight_decay > 1:  # AdamW shrinks each weight by lr x weight_decay per step
            hints.insert(0, f"a train.weight_decay below 1 (it was {t.weight_decay:g}; 0 to 0.1 is usual)")
        if t.max_grad_norm == 0:
            hints.append("train.max_grad_norm above 0 (clipping was off)")
        if t.warmup_ratio == 0:
            hints.append("a train.warmup_ratio such as 0.03")
        if trainer.args.bf16:
            hints.append("train.precision=fp32")
        cause = "start again with " + ", ".join(hints[:-1]) + (" or " if len(hints) > 1 else "") + hints[-1]
    message = (
        f"{run_dir}: training diverged at step {step}: {what[key]} is {value} and the weights are "
        f"no longer numbers, so no adapter was written; {cause}"
    )
    if main:
        update_manifest(run_dir, stages={"tune": {"status": "diverged", "error": message}})
    raise InputError(message)


def no_gain(result) -> str | None:
    """A warning when no evaluated checkpoint has a lower validation loss than the model before
    training: the adapter kept is no better than the base on held-out data (the OverfitWatch says
    so only where the loss rose twice while training's fell)."""
    best, before = result.best_eval_loss, result.initial_eval_loss
    if best is None or before is None or best < before:
        return None
    return (
        f"no checkpoint lowered the validation loss (best {best:.4f} against {before:.4f} before "
        "training): the adapter is no better than the base model on held-out data; lower train.lr, "
        "check the data, or see whether a prompt does the task (bench measures prompting baselines)"
    )
