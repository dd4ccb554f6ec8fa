"""Reading an adapter-only FSDP checkpoint back into the FSDP-wrapped peft model: on `--resume`, and
when training ends and the best checkpoint is restored.

The Trainer writes these through accelerate's `save_fsdp_model(adapter_only=True)` and reads them
through `load_fsdp_model`, which ends in peft's `set_peft_model_state_dict`. Under an FSDP root that
call (peft 0.21) strips `base_model.model.` from every key, because it decides whether the model is a
PeftModel from its parameter names, which FSDP prefixes with `_fsdp_wrapped_module.`; it then loads
with strict=False, so nothing is loaded and nothing is said (tests/fsdp_probe.py found it): a resumed
run went on from a fresh adapter, and the "best" adapter kept was the last one. Here the checkpoint
keys are mapped to the model's own parameter names and every one must land.
"""

from __future__ import annotations

from pathlib import Path

from edgetune.errors import ModelError

SHARDED, FULL = "SHARDED_STATE_DICT", "FULL_STATE_DICT"


def checkpoint_key(model_key: str, adapter: str) -> str:
    """The name a parameter has in an adapter file: its model name without the adapter's segment
    (`...q_proj.lora_A.default.weight` -> `...q_proj.lora_A.weight`)."""
    head, _, last = model_key.rpartition(".")
    if last == adapter:
        return head
    head = head.removesuffix("." + adapter)
    if head.endswith(".lora_magnitude_vector"):  # DoRA: peft saves the magnitude without `.weight`
        return head
    return f"{head}.{last}"


def adapter_names(model, adapter: str) -> dict[str, str]:
    """checkpoint key -> the model's state dict name of each adapter tensor. Read from the sharded
    state dict (local shards only, cheap in any state dict type): the clean names, which the
    parameters themselves lack under use_orig_params=false (one flat parameter per unit)."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import ShardedStateDictConfig, StateDictType

    with FSDP.state_dict_type(model, StateDictType.SHARDED_STATE_DICT, ShardedStateDictConfig()):
        keys = list(model.state_dict())
    return {checkpoint_key(k, adapter): k for k in keys if f".{adapter}." in k or k.endswith(f".{adapter}")}


def state_dict_type(plugin) -> str:
    kind = getattr(plugin.state_dict_type, "name", str(plugin.state_dict_type))
    return kind.rsplit(".", 1)[-1]


def load_fsdp_adapter(plugin, model, checkpoint_dir: str | Path) -> None:
    """Load `checkpoint_dir`'s adapter into `model` (the FSDP root over a PeftModel), in `plugin`'s
    state dict type (accelerate's FullyShardedDataParallelPlugin: sharded or full)."""
    import torch
    from accelerate.utils.constants import FSDP_MODEL_NAME
    from peft import get_peft_model_state_dict
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    checkpoint_dir = Path(checkpoint_dir)
    adapter = model.module.active_adapter
    kind = state_dict_type(plugin)
    if kind == SHARDED:
        import torch.distributed.checkpoint as dcp

        config = (StateDictType.SHARDED_STATE_DICT, plugin.state_dict_config)
        with FSDP.state_dict_type(model, *config):
            saved = get_peft_model_state_dict(model, adapter_name=adapter)  # this rank's shards, to fill
            dcp.load(
                {"model": saved}, storage_reader=dcp.FileSystemReader(checkpoint_dir / f"{FSDP_MODEL_NAME}_0")
            )
        names = adapter_names(model, adapter)
        with FSDP.state_dict_type(model, *config):
            _load(model, saved, names, checkpoint_dir)
    elif kind == FULL:  # every rank reads the whole adapter: it is small
        path = checkpoint_dir / f"{FSDP_MODEL_NAME}.bin"
        saved = torch.load(path, map_location="cpu", weights_only=True)
        names = adapter_names(model, adapter)
        with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT, FullStateDictConfig()):
            _load(model, saved, names, checkpoint_dir)
    else:
        raise ModelError(f"{checkpoint_dir}: FSDP state dict type {kind} is not one edgetune reads back")


def _load(model, saved: dict, names: dict[str, str], checkpoint_dir: Path) -> None:
    unknown = sorted(set(saved) - set(names))
    absent = sorted(set(names) - set(saved))
    if unknown or absent or not saved:
        raise ModelError(
            f"{checkpoint_dir}: the checkpoint's adapter does not match the model's "
            f"({len(unknown)} tensors it does not have, e.g. {unknown[:1]}; {len(absent)} missing, "
            f"e.g. {absent[:1]})"
        )
    result = model.load_state_dict({names[k]: v for k, v in saved.items()}, strict=False)
    if result.unexpected_keys:
        raise ModelError(f"{checkpoint_dir}: FSDP did not take {result.unexpected_keys[:2]}")
