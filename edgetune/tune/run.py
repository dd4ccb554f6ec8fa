"""`edgetune tune`: prepare data, load the model, train with the transformers Trainer, keep the best adapter."""

from __future__ import annotations

import contextlib
import importlib.util
import platform
import shutil
import time
import warnings as warnings_module
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.markup import escape

from edgetune import __version__
from edgetune.config import Recipe, load_recipe, override_list
from edgetune.cores import cpu_name
from edgetune.data.files import check_data_files
from edgetune.errors import InputError, ModelError, writing
from edgetune.export.modelfile import shared_system_prompt
from edgetune.fingerprints import data_files, training_settings
from edgetune.process_state import kept_process_state
from edgetune.run_recipe import dump_run_recipe, load_run_recipe
from edgetune.rundir import (
    RECIPE_FILE,
    RUNS_DIR,
    atomic_write_text,
    clean_stale_temporaries,
    discarded_on_failure,
    new_run_dir,
    point_latest,
    refuse_foreign_dir,
    resolve_run_dir,
    run_lock,
    sha256_tree,
    update_manifest,
)
from edgetune.tune.checks import check_checkpoint, no_gain, refuse_divergence, warn_about_data
from edgetune.tune.distributed import follow_recipe_precision, refuse_unshardable, sharding, world_size
from edgetune.tune.resume import (
    forget_earlier_start,
    interruption,
    read_tune_section,
    rebase_best,
    refuse_changed_inputs,
    refuse_finished,
    tokens_before,
    train_or_finish,
)


@dataclass
class TuneResult:
    run_dir: Path
    method: str
    device: str
    bf16: bool
    train_examples: int
    train_tokens: int
    steps: int
    max_steps: int
    epochs: float
    initial_eval_loss: float | None
    best_eval_loss: float | None
    best_step: int | None
    final_train_loss: float | None
    stopped_early: bool
    wall_s: float
    tokens_per_s: float
    resumed_from: int | None
    peak_vram_bytes: int | None = None  # CUDA: torch's peak allocated memory during the run
    processes: int = 1  # data-parallel ranks (launched by torchrun or accelerate)
    examples_per_step: int = 0  # batch_size x grad_accum x processes: what one optimizer step sees
    warnings: list[str] = field(default_factory=list)


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "edgetune": __version__}
    for dist in ("torch", "transformers", "peft", "accelerate", "bitsandbytes"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def _start_run(
    recipe_arg: str | None, overrides: list[str], run_dir: Path | str | None, resume: bool
) -> tuple[Recipe, Path, bool]:
    """The recipe and the run directory, and whether this call made the directory."""
    run_dir = None if run_dir is None else Path(run_dir)  # a str from a program calling tune()
    if resume:
        # --allow-pickle arrives as this override: allowed where the saved recipe allows it already
        allowing = [o for o in overrides if o.replace(" ", "") == "model.allow_pickle=true"]
        if recipe_arg or len(allowing) < len(overrides):
            raise InputError("--resume continues a run with the recipe saved in it; drop RECIPE and --set")
        run_dir = resolve_run_dir(run_dir, "--run-dir")
        saved = run_dir / RECIPE_FILE
        if not saved.is_file():
            raise InputError(f"{run_dir}: not a run directory (no {RECIPE_FILE}); nothing to resume")
        refuse_finished(run_dir)
        recipe = load_run_recipe(saved.parent)
        if allowing and not recipe.model.allow_pickle:
            raise InputError(
                f"{saved}: this run's recipe does not allow pickle weights, and --resume continues with "
                "the recipe saved in it; start a new run with --allow-pickle"
            )
        refuse_unshardable(recipe)
        return recipe, run_dir, False
    recipe = load_recipe(recipe_arg, overrides, new_run=True)
    if recipe.train.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise InputError("train.tensorboard is on but tensorboard is not installed: pip install tensorboard")
    refuse_unshardable(recipe)
    check_data_files(recipe.data)  # before the seconds of loading torch and the model
    if run_dir is None:
        if world_size() > 1:
            raise InputError("several processes need one shared run directory: pass --run-dir")
        return recipe, new_run_dir(recipe.name).resolve(), True
    from edgetune.tune.callbacks import complete_checkpoints
    from edgetune.tune.distributed import is_main_process

    if is_main_process():  # the other ranks may look while rank 0 already writes there
        refuse_foreign_dir(run_dir)

    # an empty checkpoints/ is a start that failed before its first save: nothing to keep or resume
    if (run_dir / "adapter").exists() or complete_checkpoints(run_dir / "checkpoints"):
        raise InputError(f"{run_dir}: already holds a run; use --resume to continue it or another --run-dir")
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{run_dir}: cannot create the run directory ({exc.strerror})") from None
    return recipe, run_dir.resolve(), created


def tune(
    recipe_arg: str | None = None,
    overrides: list[str] | None = None,
    run_dir: Path | str | None = None,
    resume: bool = False,
    console=None,
    shown: Collection[str] = (),
) -> TuneResult:
    """`shown`: warnings edgetune run's data stage printed; recorded here, not printed again."""
    from edgetune.tune.distributed import is_main_process, save_adapter, wait_for_every_rank

    started = time.time()
    recipe, run_dir, created = _start_run(recipe_arg, override_list(overrides), run_dir, resume)
    # the process's threads, RNGs, environment... are the caller's again once the tune returns
    with run_lock(run_dir, "tune") if is_main_process() else contextlib.nullcontext(), kept_process_state():
        main = is_main_process()
        warnings: list[str] = []

        def warn(message: str) -> None:
            warnings.append(message)
            if console is not None and main and message not in shown:
                console.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)

        with discarded_on_failure(run_dir, created and main):
            if not resume and main:  # under the lock: a refused second run must not write it
                atomic_write_text(run_dir / RECIPE_FILE, dump_run_recipe(recipe, run_dir))
            resume_from = _prepare_checkpoints(run_dir, resume, main)
            run = _prepare_training(recipe, run_dir, resume_from, main, warn, console)
        if main and not point_latest(run_dir):  # the run is real now: `export` finds it by default
            warn(f"{RUNS_DIR / 'latest'} does not point at this run: name it to later commands ({run_dir})")
        # the other ranks read the checkpoint's state once rank 0 has set it right (rebase_best)
        wait_for_every_rank()
        try:
            with writing(run_dir / "checkpoints"):
                train_or_finish(run.trainer, resume_from, run_dir, console if main else None)
                run.trainer.rotate_checkpoints()
        except KeyboardInterrupt:
            raise interruption(run_dir) from None

        trainer = run.trainer
        refuse_divergence(trainer, recipe, run_dir, main)
        result = _result(
            trainer.args,
            trainer.state,
            run_dir,
            run.setup,
            run.train_examples,
            bool(run.valid_examples),
            run.initial_eval,
            resume_from,
            started,
            warnings,
        )
        if said := no_gain(result):
            warn(said)
        save_adapter(trainer, run.tokenizer, run_dir / "adapter", main)
        if main:
            _record_done(run_dir, result, run.setup, trainer)
        wait_for_every_rank()  # the ranks leave together, once the main one wrote adapter and manifest
        return result


@dataclass
class _Training:
    """What one tune trains with, set up before the first step."""

    trainer: Any
    tokenizer: Any
    setup: Any
    train_examples: list
    valid_examples: list
    initial_eval: float | None = None  # the validation loss before training, once measured


def _prepare_training(
    recipe: Recipe, run_dir: Path, resume_from: Path | None, main: bool, warn, console
) -> _Training:
    """Model, tokenizer, data and Trainer, with the start of the run recorded in its manifest."""
    import torch
    import transformers

    from edgetune.data.prepare import past_the_context, prepare
    from edgetune.models import embedding_rows, ids_past_the_embedding, load_tokenizer, resolve_model
    from edgetune.rundir import low_space_warning, weights_bytes
    from edgetune.tune.model import choose_setup, load_for_training
    from edgetune.tune.trainer import build_trainer, training_args

    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    transformers.logging.set_verbosity_error()
    # the Trainer's own UserWarnings (tensor copies, mtime fallbacks) say nothing a user can act on
    warnings_module.filterwarnings("ignore", category=UserWarning, module=r"transformers\.trainer")
    transformers.set_seed(recipe.train.seed)  # before the adapter is created: LoRA init is random

    model_ref = resolve_model(
        recipe.model.base, recipe.model.revision, quiet=not main, allow_pickle=recipe.model.allow_pickle
    )
    # every rank checks a resume (one refusing alone would leave the others waiting in training)
    base_sha256 = sha256_tree(model_ref.files) if main or resume_from is not None else ""
    if resume_from is not None:
        refuse_changed_inputs(run_dir, recipe, model_ref, base_sha256, warn)
    tokenizer = load_tokenizer(model_ref, recipe.model.trust_remote_code)
    # checkpoints hold adapters and optimizer states; the merged model that follows is a full copy
    space = low_space_warning(run_dir, 2 * weights_bytes(model_ref.path), "this run (checkpoints + merge)")
    if space:
        warn(space)
    progress = (lambda message: console.print(f"[dim]{message}[/]")) if console is not None and main else None
    data = prepare(recipe.data, tokenizer, say=progress)
    tokenizer.chat_template = data.shipped_template  # saved with every checkpoint and the adapter
    train_examples, valid_examples = data.encoded["train"].examples, data.encoded["valid"].examples
    rows = embedding_rows(model_ref.path)
    if problem := ids_past_the_embedding([*train_examples, *valid_examples], rows, tokenizer):
        raise ModelError(problem)
    warn_about_data(recipe, data, warn)
    if context := past_the_context(data, model_ref.path, recipe.model.trust_remote_code):
        warn(context)
    setup = choose_setup(recipe.train.method, recipe.train.precision)
    for message in [*setup.warnings, follow_recipe_precision(setup.bf16)]:
        if message:
            warn(message)
    args = training_args(recipe, run_dir, setup, bool(valid_examples), eval_first=resume_from is None)
    model = load_for_training(
        model_ref,
        setup,
        recipe.train.lora,
        recipe.model.trust_remote_code,
        recipe.train.gradient_checkpointing,
    )
    callbacks = tune_callbacks(recipe, run_dir, bool(valid_examples), warn, console if main else None)
    trainer = build_trainer(recipe, args, model, tokenizer, train_examples, valid_examples, callbacks)
    run = _Training(trainer, tokenizer, setup, train_examples, valid_examples)
    if main:
        run.initial_eval = _write_start_manifest(run_dir, recipe, setup, model_ref, base_sha256, data)
    if valid_examples and resume_from is None:
        from edgetune.tune.callbacks import InitialEval

        def record_initial_eval(loss: float) -> None:
            run.initial_eval = loss
            if main:
                update_manifest(run_dir, stages={"tune": {"status": "running", "initial_eval_loss": loss}})
                if console is not None:
                    console.print(f"validation loss before training: {loss:.4f}")

        trainer.add_callback(InitialEval(record_initial_eval))
    return run


def _record_done(run_dir: Path, result: TuneResult, setup, trainer) -> None:
    fields = {k: v for k, v in asdict(result).items() if k not in ("run_dir", "warnings")}
    update_manifest(
        run_dir,
        stages={
            "tune": {
                **fields,
                "status": "done",
                "dtype": setup.dtype,
                "optim": setup.optim,
                "gradient_checkpointing": bool(getattr(trainer.model, "is_gradient_checkpointing", False)),
                "warnings": result.warnings,
                "adapter": "adapter",
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        },
    )


def _prepare_checkpoints(run_dir: Path, resume: bool, main: bool) -> Path | None:
    """Clean what an interrupted run left; return the checkpoint to resume from (or None)."""
    from edgetune.tune.callbacks import complete_checkpoints, truncate_metrics

    checkpoints = run_dir / "checkpoints"
    if main:
        clean_stale_temporaries(run_dir)
        done = complete_checkpoints(checkpoints)
        for partial in set(checkpoints.glob("checkpoint-*")) - set(done):
            shutil.rmtree(partial, ignore_errors=True)  # interrupted while being written
    if not resume:
        if main:  # a start that failed before its first save may have logged its step-0 evaluation
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
            forget_earlier_start(run_dir)
        return None
    done = complete_checkpoints(checkpoints)
    if not done:
        raise InputError(f"{run_dir}: no complete checkpoint to resume from; start the run again")
    check_checkpoint(done[-1])
    if main:
        truncate_metrics(run_dir / "metrics.jsonl", int(done[-1].name.split("-")[-1]))
        rebase_best(done[-1], run_dir)
    return done[-1]


def tune_callbacks(recipe: Recipe, run_dir: Path, has_valid: bool, warn, console) -> list[Any]:
    """The callbacks a tune trains with (bench/step_profile.py profiles a step with them too)."""
    from transformers import EarlyStoppingCallback

    from edgetune.tune import callbacks as cb

    metrics = run_dir / "metrics.jsonl"
    callbacks: list[Any] = [cb.CommitCheckpoints(metrics), cb.MetricsLog(metrics), cb.StopOnNonFinite()]
    callbacks += [cb.OverfitWatch(warn), cb.LossSpikeWatch(warn, recipe.train.lr)]
    if has_valid:
        callbacks.append(cb.SaveTheBest())
    if console is not None:
        callbacks.append(cb.Progress(console))
    if has_valid and recipe.train.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=recipe.train.early_stopping_patience))
    return callbacks


def _write_start_manifest(
    run_dir: Path, recipe: Recipe, setup, model_ref, base_sha256: str, data
) -> float | None:
    """What this run starts from; returns the validation loss before training if an earlier start measured it."""
    import torch

    prior = read_tune_section(run_dir)
    update_manifest(
        run_dir,
        edgetune_version=__version__,
        created=prior.get("created") or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        versions=_versions(),
        device={
            "kind": setup.device,
            "cpu": cpu_name(),
            "torch_threads": torch.get_num_threads(),
            "world_size": world_size(),
            "sharding": sharding(),
            "cuda": torch.cuda.get_device_name(0) if setup.device == "cuda" else None,
        },
        recipe={
            "name": recipe.name,
            "source": recipe.source,
            "sha256": recipe.digest(),
            "training_sha256": training_settings(recipe),
            "written_in": str(run_dir.resolve()),  # where recipe.yaml's relative paths were made
        },
        base_model={
            "name": model_ref.name,
            "kind": model_ref.kind,
            "path": str(model_ref.files),
            "sha256": base_sha256,
        },
        # the system prompt every training chat had as rendered (its own, or data.system_prompt where
        # it had none), for `edgetune chat`, merge and export, once the data has moved
        data={
            "sha256": data_files(recipe),
            **data.summary(),
            "trained_system_prompt": shared_system_prompt(data.splits.train, data.renderer),
        },
    )
    return prior.get("initial_eval_loss")


def _result(
    args,
    state,
    run_dir: Path,
    setup,
    train_examples,
    has_valid: bool,
    initial_eval: float | None,
    resume_from: Path | None,
    started: float,
    warnings: list[str],
) -> TuneResult:
    best_step = None
    if has_valid and state.best_model_checkpoint:
        best_step = int(state.best_model_checkpoint.rsplit("-", 1)[-1])
    train_losses = [h["loss"] for h in state.log_history if "loss" in h]
    wall = time.time() - started
    runtime = next((h["train_runtime"] for h in reversed(state.log_history) if "train_runtime" in h), wall)
    return TuneResult(
        run_dir=run_dir,
        method=setup.method,
        device=setup.device,
        bf16=setup.bf16,
        train_examples=len(train_examples),
        train_tokens=sum(len(e.input_ids) for e in train_examples),
        steps=state.global_step,
        max_steps=state.max_steps,
        epochs=round(state.epoch or 0.0, 3),
        initial_eval_loss=initial_eval,
        best_eval_loss=state.best_metric if has_valid else None,
        best_step=best_step,
        final_train_loss=train_losses[-1] if train_losses else None,
        stopped_early=state.global_step < state.max_steps,
        wall_s=round(wall, 1),
        tokens_per_s=round((state.num_input_tokens_seen - tokens_before(resume_from)) / runtime, 1)
        if runtime
        else 0.0,
        resumed_from=int(resume_from.name.split("-")[-1]) if resume_from else None,
        warnings=warnings,
        peak_vram_bytes=_peak_vram(setup.device),
        processes=args.world_size,
        examples_per_step=args.per_device_train_batch_size
        * args.gradient_accumulation_steps
        * args.world_size,
    )


def _peak_vram(device: str) -> int | None:
    import torch

    return int(torch.cuda.max_memory_allocated()) if device == "cuda" and torch.cuda.is_available() else None
