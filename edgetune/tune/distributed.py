"""Running under a launcher (torchrun, accelerate launch): which one, which rank, and what data
parallelism and sharding (DDP, FSDP, DeepSpeed ZeRO-3) need from `edgetune tune`.

peft (0.21) picks an adapter's tensors out of a state dict by key prefixes it builds from the live
module tree, stripping a leading `_fsdp_wrapped_module.` only. FSDP's state dicts use the clean
names, but nested FSDP units (each decoder layer and each LoRA matrix is one under peft's wrap
policy) put that segment in the middle of a name (`layers.0._fsdp_wrapped_module.self_attn...`), so
no prefix matches: every checkpoint and the final adapter come out empty, and loading one back
maps nothing. `see_through_fsdp` cleans every such segment from those prefixes; without FSDP
wrappers it changes nothing.
"""

from __future__ import annotations

import os
from pathlib import Path


def world_size() -> int:
    """How many processes the launcher started (1 without one; a malformed value reads as 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE") or "1")
    except ValueError:
        return 1


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def under_fsdp() -> bool:
    """Launched by `accelerate launch` with an FSDP config (see examples/accelerate/)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")


def under_deepspeed() -> bool:
    """Launched by `accelerate launch` with a DeepSpeed config."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true")


def refuse_unshardable(recipe) -> None:
    """What FSDP cannot train, refused before any work, on a new start and a resume alike."""
    from edgetune.errors import InputError

    if under_fsdp() and world_size() < 2:
        # torch then falls back to NO_SHARD, whose full state dict drops the frozen base weights a
        # LoRA unit holds: saving the adapter fails at the end of the run
        raise InputError(
            "FSDP with one process shards nothing: run `edgetune tune` without the launcher on one GPU, "
            "or launch two or more processes"
        )
    if under_fsdp() and recipe.train.lora.dora:  # peft's DoRA reads lora_A's 2-D shape, which FSDP flattens
        raise InputError(
            "train.lora.dora does not train under FSDP (peft 0.21 fails at the first step); drop it"
        )


def follow_recipe_precision(bf16: bool) -> str | None:
    """The launcher's mixed precision (an accelerate config's `mixed_precision`) set to what the
    recipe's train.precision chose: transformers keeps the launcher's wherever its own bf16 is off,
    so an fp32 run under the shipped configs' bf16 trained in bf16 autocast while its summary and
    manifest said fp32. Returns what to warn when the launcher had asked for another one."""
    ours = "bf16" if bf16 else "no"
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if launcher in (ours, "no"):  # "no": the recipe's bf16 is the Trainer's own, as transformers does it
        os.environ["ACCELERATE_MIXED_PRECISION"] = ours
        return None
    if under_fsdp() or under_deepspeed():  # sharded bf16-stored weights: the config's precision stays
        return (
            f"train.precision ({'bf16' if bf16 else 'fp32'}) is not used under FSDP or DeepSpeed: the "
            f"launcher config's mixed_precision {launcher} is (the manifest's precision is the recipe's)"
        )
    os.environ["ACCELERATE_MIXED_PRECISION"] = ours
    return (
        f"the launcher's mixed_precision {launcher} is not used: train.precision decides "
        f"({'bf16 autocast' if bf16 else 'fp32'}); set train.precision to change it"
    )


def sharding() -> str | None:
    """ "fsdp" or "deepspeed" under such a launcher config (the run's manifest records it), else None."""
    return "fsdp" if under_fsdp() else "deepspeed" if under_deepspeed() else None


def resume_command(run_dir: Path, processes: int, sharded: str | None = None) -> str:
    """How to continue a run: under a launcher of the processes it started with (`sharded`, FSDP or
    DeepSpeed: under accelerate with its config, where torchrun would resume it as plain DDP)."""
    plain = f"edgetune tune --resume --run-dir {run_dir}"
    if processes < 2:
        return plain
    accelerate = f"accelerate launch --config_file CONFIG --num_processes {processes} -m {plain}"
    if sharded:
        return f"{accelerate} (CONFIG: the run's FSDP or DeepSpeed config)"
    return f"torchrun --nproc_per_node {processes} -m {plain} (or {accelerate} with the run's config)"


FSDP_SEGMENT = "_fsdp_wrapped_module."


def see_through_fsdp() -> bool:
    """Make peft's adapter-key prefixes FSDP-clean (once per process). False where this peft builds
    no such prefixes (older versions select adapter keys by name and never had the problem)."""
    try:
        from peft.tuners import tuners_utils
    except ImportError:
        return False
    original = getattr(tuners_utils, "_get_tuner_state_dict_key_prefixes", None)
    if original is None:
        return False
    if getattr(original, "sees_through_fsdp", False):
        return True

    def clean_prefixes(model, adapter_name=None):
        return {p.replace(FSDP_SEGMENT, "") for p in original(model, adapter_name=adapter_name)}

    clean_prefixes.sees_through_fsdp = True
    tuners_utils._get_tuner_state_dict_key_prefixes = clean_prefixes
    return True


def wait_for_every_rank() -> None:
    """A barrier across the launched ranks; nothing in a single process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def end_launched_process(code: int = 0) -> None:
    """End a launched rank's process now that its part is written and printed; nothing in a single
    process (a process group of one included). torch.distributed's teardown is left out: destroy_process_group hung once after a
    2-rank run had finished (the main rank never printed its summary; an intermittent hang known
    upstream, pytorch/pytorch#75097), and without it gloo's live threads abort the interpreter's
    exit ("terminate called without an active exception", which replaces the exit code). Leaving
    through os._exit skips both: every file edgetune writes is already fsynced and renamed, and
    stdio and logging are flushed here. The launcher sees the exit code as given."""
    import logging
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
        return
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or gone: nothing left to lose
            pass
    os._exit(code)


def save_adapter(trainer, tokenizer, out: Path, main: bool) -> None:
    """The kept adapter and the tokenizer (whose chat template travels with it), written atomically."""
    from accelerate.utils import DistributedType

    accelerator = trainer.accelerator
    # under FSDP or DeepSpeed ZeRO-3 each rank holds a shard: gathering them is collective, so every
    # rank takes part, and only the main one writes
    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    state = accelerator.get_state_dict(trainer.model_wrapped) if sharded else None
    if main:
        from edgetune.rundir import atomic_dir

        model = accelerator.unwrap_model(trainer.model)
        with atomic_dir(out) as staging:
            model.save_pretrained(str(staging), state_dict=state, safe_serialization=True)
            tokenizer.save_pretrained(str(staging))
            _sorted_targets(staging / "adapter_config.json")


def _sorted_targets(config: Path) -> None:
    """peft keeps target_modules as a set and writes it in the process's hash order: two tunes of
    one recipe wrote the same adapter with two adapter_config.json files (and two merge fingerprints)."""
    import json

    settings = json.loads(config.read_text(encoding="utf-8"))
    if isinstance(settings.get("target_modules"), list):
        settings["target_modules"] = sorted(settings["target_modules"])
        config.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n", encoding="utf-8")
