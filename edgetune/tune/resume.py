"""Whether a run may be resumed (not once it finished or diverged, and not on other data or another
local base than its checkpoints learned from), and how: from a checkpoint where training had ended
it is only finished. Also what a new start in the directory of a failed one forgets, and what
Ctrl-C says."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgetune.config import Recipe
from edgetune.errors import InputError
from edgetune.rundir import read_manifest


def read_tune_section(run_dir: Path) -> dict[str, Any]:
    manifest = read_manifest(run_dir)
    out = dict(manifest.get("stages", {}).get("tune", {}))
    if "created" in manifest:
        out["created"] = manifest["created"]
    return out


def finished_tune(run_dir: Path) -> dict[str, Any] | None:
    """The manifest's record of a tune that finished (its adapter saved), or None."""
    done = read_tune_section(run_dir)
    return done if done.get("status") == "done" and (run_dir / "adapter").is_dir() else None


def refuse_finished(run_dir: Path) -> None:
    """A finished run has nothing to resume: training on from its last checkpoint would step past
    max_steps (or past an early stop) and rotate the best checkpoint away. A run that diverged
    would only repeat the steps that made its weights NaN."""
    section = read_tune_section(run_dir)
    if section.get("status") == "diverged":
        raise InputError(f"{section.get('error', run_dir)} (resuming would repeat the same steps)")
    done = finished_tune(run_dir)
    if done is None:
        return
    why = " (stopped early: validation loss stopped improving)" if done.get("stopped_early") else ""
    raise InputError(
        f"{run_dir}: the run finished at step {done.get('steps')} of {done.get('max_steps')}{why}; "
        "nothing to resume. Export it (edgetune export), or start a new run to train longer"
    )


def refuse_changed_inputs(run_dir: Path, recipe: Recipe, model_ref, base_sha256: str, warn) -> None:
    """A resumed run goes on from what its checkpoints learned: on the data files and the base
    model recorded when it started. Changed since, the run would end as a mix of two trainings
    while its manifest (and every file exported from it) named only the second. A built-in or hub
    base is only warned about: its files are not the user's to put back (a hub model updated
    upstream, a built-in converted again by a newer transformers)."""
    manifest = read_manifest(run_dir)
    from edgetune.fingerprints import data_files, training_settings
    from edgetune.tune.distributed import resume_command, world_size

    device = manifest.get("device", {})
    started = device.get("world_size")
    if isinstance(started, int) and started != world_size():
        per_step = recipe.train.batch_size * recipe.train.grad_accum
        raise InputError(
            f"{run_dir}: started with {started} process(es), resumed with {world_size()}: each step "
            f"would see {per_step * world_size()} examples, not {per_step * started}, and its data order "
            f"would change. Resume it as it started: {resume_command(run_dir, started, device.get('sharding'))}"
        )

    trained_under = manifest.get("recipe", {}).get("training_sha256")
    if trained_under and trained_under != training_settings(recipe):
        raise InputError(
            f"{run_dir / 'recipe.yaml'}: its model, train or data settings changed since this run "
            "started; its checkpoints learned under the earlier ones (a learning rate, batch size or "
            "LoRA shape resumed would be ignored or fail). Put them back to resume, or start a new run"
        )
    was = manifest.get("data", {}).get("sha256", {})
    if not was:  # a start that never recorded its inputs: nothing to compare
        return

    splits = {split: getattr(recipe.data, split) for split in ("train", "valid", "test")}
    changed = [
        f"data.{split} ({path}: gone)" for split, path in splits.items() if path and not Path(path).is_file()
    ]
    if not changed:
        now = data_files(recipe)
        changed = [f"data.{s} ({splits[s] or 'no file'})" for s in splits if was.get(s) != now.get(s)]
    base_was = manifest.get("base_model", {}).get("sha256")
    if base_was not in (None, base_sha256):
        if model_ref.kind == "local":
            changed.append(f"model.base ({recipe.model.base})")
        else:
            warn(
                f"model.base ({recipe.model.base}): its files differ from those this run started on "
                "(updated upstream, or converted again); resuming on them"
            )
    if changed:
        raise InputError(
            f"{run_dir}: {', '.join(changed)} changed since this run started; its checkpoints learned "
            "from the earlier files. Put them back to resume, or start a new run on the new ones"
        )


def ended_at(checkpoint: Path) -> bool:
    """Whether training had ended at this checkpoint (its last step, or early stopping's stop),
    the run killed before it wrote adapter/. Resumed, the Trainer takes one step more before it
    looks at either: past an early stop it trains on, and a different adapter ships."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    control = state.get("stateful_callbacks", {}).get("TrainerControl", {}).get("args", {})
    steps, last = state.get("global_step", 0), state.get("max_steps", 0)
    return bool(control.get("should_training_stop")) or (isinstance(last, int) and 0 < last <= steps)


def train_or_finish(trainer, resume_from: Path | None, run_dir: Path, console) -> None:
    """Train (from `resume_from`); from a checkpoint where training had ended, only what the end of
    training does: the best checkpoint's adapter (the last one's without validation) into the model.
    Under FSDP or DeepSpeed a checkpoint holds shards the Trainer's own loading reads: it trains."""
    sharded = trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled
    if resume_from is None or sharded or not ended_at(resume_from):
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        return
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import TrainerState

    state = TrainerState.load_from_json(str(resume_from / "trainer_state.json"))
    source = resume_from
    if trainer.args.load_best_model_at_end and state.best_model_checkpoint:
        best = run_dir / "checkpoints" / Path(state.best_model_checkpoint).name  # the run may have moved
        if (best / "adapter_model.safetensors").is_file():
            source = best
        elif console is not None:  # as the Trainer does: the last weights, said
            console.print(
                f"[yellow]warning:[/] {best.name}, the best checkpoint, is gone: the last one ships"
            )
        state.best_model_checkpoint = str(best) if source == best else None
    set_peft_model_state_dict(trainer.model, load_file(str(source / "adapter_model.safetensors")))
    trainer.state = state
    if console is not None:
        console.print(
            f"training had ended at step {state.global_step} ({resume_from.name}); finishing the run "
            f"with {source.name}'s adapter"
        )


def forget_earlier_start(run_dir: Path) -> None:
    """A new start in a run directory where one failed before its first checkpoint: the manifest
    says what this start trains on, not also the earlier one's data, base and losses (merged in,
    a later resume compared the earlier start's data.valid and was refused). The pipeline's
    record stays: it says which tune the run started."""
    from edgetune.rundir import MANIFEST, atomic_write_json

    manifest = read_manifest(run_dir)
    kept = {k: v for k, v in manifest.items() if k == "pipeline"}
    if kept != manifest:
        atomic_write_json(run_dir / MANIFEST, kept)


def tokens_before(checkpoint: Path | None) -> int:
    """Tokens seen before a resumed session: its runtime is its own, its token count the run's."""
    if checkpoint is None:
        return 0
    try:
        return int(
            json.loads((checkpoint / "trainer_state.json").read_text()).get("num_input_tokens_seen", 0)
        )
    except (OSError, ValueError, TypeError):
        return 0


def interruption(run_dir: Path):
    """What Ctrl-C in training says: how to go on, where a checkpoint was committed to go on from."""
    from edgetune.errors import Interrupted
    from edgetune.tune.callbacks import complete_checkpoints
    from edgetune.tune.distributed import resume_command, sharding, world_size

    if not complete_checkpoints(run_dir / "checkpoints"):
        return Interrupted("interrupted before the first checkpoint: nothing to resume; start the run again")
    return Interrupted(f"interrupted; continue with: {resume_command(run_dir, world_size(), sharding())}")


def no_adapter_yet(run_dir: Path) -> InputError:
    """What merge and bench say of a run with no adapter: how to finish its tune, or (one that
    diverged, which a resume would only repeat) why it has none."""
    from edgetune.tune.callbacks import complete_checkpoints

    section = read_tune_section(run_dir)
    if section.get("status") == "diverged":
        return InputError(f"{section.get('error', run_dir)}; it has no adapter to use")
    if not complete_checkpoints(run_dir / "checkpoints"):
        return InputError(
            f"{run_dir}: its tune stopped before its first checkpoint: nothing to resume; start it again"
        )
    from edgetune.tune.distributed import resume_command

    device = read_manifest(run_dir).get("device", {})
    processes = device.get("world_size")
    command = resume_command(run_dir, processes if isinstance(processes, int) else 1, device.get("sharding"))
    return InputError(
        f"{run_dir}: no adapter yet (its tune did not finish); continue it with `{command}`, then export"
    )


def _tensor_shapes(weights: Path) -> dict[str, list[int]] | None:
    try:
        from safetensors import safe_open

        with safe_open(str(weights), "pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception:  # a damaged file: the merge that follows names it
        return None


def config_missing(run_dir: Path) -> InputError | None:
    """What merge says of an adapter/ whose weights lie there without their adapter_config.json
    (copied without it?): not "no adapter yet, resume the tune", which then found a finished tune
    with nothing to resume. The config of the tune's checkpoint whose tensors are the adapter's
    (names and shapes: the same run's LoRA) is named to copy back."""
    from edgetune.tune.callbacks import complete_checkpoints

    adapter = run_dir / "adapter"
    weights = next(
        (adapter / n for n in ("adapter_model.safetensors", "adapter_model.bin") if (adapter / n).is_file()),
        None,
    )
    if weights is None:
        return None
    shapes = _tensor_shapes(weights) if weights.suffix == ".safetensors" else None
    spare = [
        c / "adapter_config.json"
        for c in complete_checkpoints(run_dir / "checkpoints")
        if (c / "adapter_config.json").is_file()
        and shapes is not None
        and _tensor_shapes(c / "adapter_model.safetensors") == shapes
    ]
    fix = (
        f"copy it back from the tune's checkpoint of the same tensors, {spare[-1]}"
        if spare
        else "put back the adapter_config.json saved with these weights (peft writes both), or train again"
    )
    return InputError(
        f"{adapter / 'adapter_config.json'}: missing beside the adapter's weights ({weights.name}; "
        f"copied without it?); {fix}"
    )


def rebase_best(checkpoint: Path, run_dir: Path) -> None:
    """The best checkpoint a resumed state names, as a path in the run as it is now: the Trainer
    keeps an absolute path: in a run moved since it found nothing there, shipped the last weights
    while the manifest named the best step, and no longer kept the best from rotation (in a copy,
    it would have read the original run's)."""
    from edgetune.rundir import atomic_write_text

    path = checkpoint / "trainer_state.json"
    state = json.loads(path.read_text())
    best = state.get("best_model_checkpoint")
    if not isinstance(best, str):
        return
    # by name, also where the old path still exists: a copied run's best is its own, not the original's
    here = run_dir / "checkpoints" / Path(best).name
    if Path(best) != here and here.is_dir():
        state["best_model_checkpoint"] = str(here)
        text = json.dumps(state, indent=2, sort_keys=True) + "\n"  # as transformers writes it
        atomic_write_text(path, text)
