"""Reading an adapter-only FSDP checkpoint back into the FSDP-wrapped peft model: on `--resume`, and
when training ends and the best checkpoint is restored.

The Trainer writes these through accelerate's `save_fsdp_model(adapter_only=True)` and reads them
through `load_fsdp_model`, which ends in peft's `set_peft_model_state_dict`. Under an FSDP root that
call (peft 0.21) strips `base_model.model.` from every key, because it decides whether the model is a
PeftModel from its parameter names, which FSDP prefixes with `_fsdp_wrapped_module.`; it then loads
with strict=False, so nothing is loaded and nothing is said (tests/fsdp_probe.py found it): a resumed
run went on from a fresh adapter, and the "best" adapter kept was the last one. Here peft's own two maps
(model -> checkpoint names, as it saves, and back) are applied under the sharded state dict, the
load is made in the checkpoint's own state dict type, and every tensor must land.
"""

from __future__ import annotations

from pathlib import Path

from edgetune.errors import ModelError

SHARDED, FULL = "SHARDED_STATE_DICT", "FULL_STATE_DICT"


def state_dict_type(plugin) -> str:
    kind = getattr(plugin.state_dict_type, "name", str(plugin.state_dict_type))
    return kind.rsplit(".", 1)[-1]


def load_fsdp_adapter(plugin, model, checkpoint_dir: str | Path) -> None:
    """Load `checkpoint_dir`'s adapter into `model` (the FSDP 1 root over a PeftModel), written in
    `plugin`'s state dict type (accelerate's FullyShardedDataParallelPlugin: sharded or full)."""
    import torch
    from accelerate.utils.constants import FSDP_MODEL_NAME
    from peft import get_peft_model_state_dict
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
    from torch.distributed.fsdp import FullStateDictConfig, ShardedStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    checkpoint_dir = Path(checkpoint_dir)
    kind = state_dict_type(plugin)
    files = {
        SHARDED: checkpoint_dir / f"{FSDP_MODEL_NAME}_0",
        FULL: checkpoint_dir / f"{FSDP_MODEL_NAME}.bin",
    }
    if kind not in files:
        raise ModelError(f"{checkpoint_dir}: FSDP state dict type {kind} is not one edgetune reads back")
    if not files[kind].exists():
        raise ModelError(f"{checkpoint_dir}: not an FSDP checkpoint ({files[kind].name} is missing)")
    adapter = model.module.active_adapter
    config = model.module.peft_config[adapter]
    remap = getattr(PEFT_TYPE_TO_TUNER_MAPPING[config.peft_type], "_remap_adapter_state_dict_for_load", None)
    if remap is None:
        raise ModelError(
            "reading FSDP adapter checkpoints back needs peft 0.21 or newer: pip install -U peft"
        )
    sharded = (StateDictType.SHARDED_STATE_DICT, ShardedStateDictConfig())
    with FSDP.state_dict_type(model, *sharded):  # local shards only, in either type
        template = get_peft_model_state_dict(model, adapter_name=adapter)  # the names a checkpoint holds
        if kind == SHARDED:
            import torch.distributed.checkpoint as dcp

            dcp.load({"model": template}, storage_reader=dcp.FileSystemReader(files[kind]))
            saved = template  # this rank's shards, filled
        else:  # every rank reads the whole adapter: it is small
            saved = torch.load(files[kind], map_location="cpu", weights_only=True)
        _check_names(saved, template, checkpoint_dir)
        to_model = remap(model=model, config=config, adapter_name=adapter, state_dict=saved)
    unmapped = sorted(set(to_model) & set(saved))  # passed through: no adapter tensor of that name
    loading = sharded if kind == SHARDED else (StateDictType.FULL_STATE_DICT, FullStateDictConfig())
    with FSDP.state_dict_type(model, *loading):
        result = model.load_state_dict(to_model, strict=False)
    if unmapped or result.unexpected_keys:
        raise ModelError(f"{checkpoint_dir}: FSDP did not take {(unmapped or result.unexpected_keys)[:2]}")


def _check_names(saved: dict, template: dict, checkpoint_dir: Path) -> None:
    unknown = sorted(set(saved) - set(template))
    absent = sorted(set(template) - set(saved))
    if unknown or absent or not saved:
        raise ModelError(
            f"{checkpoint_dir}: the checkpoint's adapter does not match the model's "
            f"({len(unknown)} tensors it does not have, e.g. {unknown[:1]}; {len(absent)} missing, "
            f"e.g. {absent[:1]})"
        )
