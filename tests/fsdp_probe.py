"""One FSDP training step on two CPU ranks (gloo), as the shipped FSDP configs set it up: our model
loading under an FSDP launch, peft's wrap policy, full sharding, then the adapter gathered and saved
by `save_adapter` with a full state dict gathered from both ranks. accelerate itself runs FSDP
only on accelerators, so the Trainer is left out; everything else is the real code.

    torchrun --nproc_per_node 2 tests/fsdp_probe.py MODEL_DIR CONFIG_YAML METHOD OUT_DIR
"""

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
import yaml
from accelerate.utils import DistributedType
from peft.utils.other import fsdp_auto_wrap_policy
from torch.distributed.fsdp import FullStateDictConfig, ShardingStrategy, StateDictType
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

from edgetune.config import LoraConfig
from edgetune.models import load_tokenizer, resolve_model
from edgetune.tune.distributed import save_adapter
from edgetune.tune.fsdp_checkpoint import load_fsdp_adapter
from edgetune.tune.model import TrainSetup, load_for_training

model_dir, config_path, method, out = sys.argv[1], Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
fsdp = yaml.safe_load(config_path.read_text())["fsdp_config"]
os.environ["ACCELERATE_USE_FSDP"] = "true"
dist.init_process_group("gloo")
torch.manual_seed(0)
ref = resolve_model(model_dir)
setup = TrainSetup(method, "cpu", "nf4" if method == "qlora" else "bfloat16", True, "adamw_torch", [])
model = load_for_training(ref, setup, LoraConfig(), gradient_checkpointing=True)
wrapped = FSDP(
    model,
    auto_wrap_policy=fsdp_auto_wrap_policy(model),
    sharding_strategy=ShardingStrategy[fsdp["fsdp_sharding_strategy"]],
    use_orig_params=fsdp["fsdp_use_orig_params"],
    device_id=torch.device("cpu"),
)
optimizer = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=1e-2)
ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(dist.get_rank()))
loss = wrapped(input_ids=ids, labels=ids).loss
loss.backward()
optimizer.step()


def full_state_dict(module):
    """accelerate's FSDP gather (FULL_STATE_DICT), without its offload_to_cpu/rank0_only: with the
    parameters already on the CPU, that offload segfaults in torch (a CPU-only artifact)."""
    with FSDP.state_dict_type(module, StateDictType.FULL_STATE_DICT, FullStateDictConfig()):
        return module.state_dict()


# what accelerate's save_fsdp_model(adapter_only=True) stores in a checkpoint (shipped state dict type)
from accelerate.utils.fsdp_utils import _get_model_state_dict  # noqa: E402

with FSDP.state_dict_type(wrapped, StateDictType[fsdp["fsdp_state_dict_type"]]):
    checkpoint_keys = sorted(_get_model_state_dict(wrapped, adapter_only=True))
if dist.get_rank() == 0:
    out.parent.mkdir(parents=True, exist_ok=True)
    (out.parent / "checkpoint_keys.txt").write_text("\n".join(checkpoint_keys))

accelerator = SimpleNamespace(
    distributed_type=DistributedType.FSDP, get_state_dict=full_state_dict, unwrap_model=lambda m: m
)
trainer = SimpleNamespace(accelerator=accelerator, model=model, model_wrapped=wrapped)
save_adapter(trainer, load_tokenizer(ref), out, main=dist.get_rank() == 0)

# resuming: the Trainer's FSDP checkpoint calls (adapter-only model, optimizer) put back the trained
# adapter and the optimizer's moments after both are spoiled: in the shipped state dict type, and the
# model in the full one too (accelerate's default for FSDP 1 when a config names none)
from accelerate import PartialState  # noqa: E402
from accelerate.utils import load_fsdp_optimizer, save_fsdp_model, save_fsdp_optimizer  # noqa: E402
from torch.distributed.fsdp import (  # noqa: E402
    FullOptimStateDictConfig,
    ShardedOptimStateDictConfig,
    ShardedStateDictConfig,  # noqa: E402
)

PartialState()  # what accelerate's logging in those calls needs; the process group is the one above
assert fsdp["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
accelerator.__dict__.update(
    process_index=dist.get_rank(),
    is_main_process=dist.get_rank() == 0,
    is_fsdp2=False,
    wait_for_everyone=dist.barrier,
)
trained = {k: v.clone() for k, v in full_state_dict(wrapped).items() if "lora_" in k}
moments = [s["exp_avg"].clone() for s in optimizer.state.values()]
resumed = []
for kind in ("SHARDED_STATE_DICT", "FULL_STATE_DICT"):
    sharded = kind == "SHARDED_STATE_DICT"
    plugin = SimpleNamespace(
        state_dict_type=StateDictType[kind],
        state_dict_config=ShardedStateDictConfig() if sharded else FullStateDictConfig(),
        optim_state_dict_config=ShardedOptimStateDictConfig() if sharded else FullOptimStateDictConfig(),
        fsdp_version=fsdp["fsdp_version"],
    )
    # with 2 processes accelerate's full save offloads to the CPU, which segfaults where the
    # parameters already are (see full_state_dict above): rank 0 writes the whole adapter either way
    accelerator.num_processes = 2 if sharded else 1
    checkpoint = out.parent / f"checkpoint-{kind}"
    save_fsdp_model(plugin, accelerator, wrapped, checkpoint, adapter_only=True)
    if sharded:
        save_fsdp_optimizer(plugin, accelerator, optimizer, wrapped, checkpoint)
    dist.barrier()
    with torch.no_grad():
        for param in wrapped.parameters():
            if param.requires_grad:
                param.add_(1.0)
    for state in optimizer.state.values():
        state["exp_avg"].zero_()
    load_fsdp_adapter(plugin, wrapped, checkpoint)  # what the Trainer's resume and best-model load call
    if sharded:
        load_fsdp_optimizer(plugin, accelerator, optimizer, wrapped, checkpoint)
        assert all(
            torch.equal(s["exp_avg"], m) for s, m in zip(optimizer.state.values(), moments, strict=True)
        )
    restored = {k: v for k, v in full_state_dict(wrapped).items() if "lora_" in k}
    assert trained and restored.keys() == trained.keys()
    assert all(torch.equal(restored[k], trained[k]) for k in trained), f"{kind}: the adapter was not restored"
    resumed.append(kind)
if dist.get_rank() == 0:
    (out.parent / "resumed.txt").write_text(f"{len(trained)} adapter tensors from {' and '.join(resumed)}\n")
dist.barrier()
# as edgetune's own ranks end (tune.distributed.end_launched_process): destroy_process_group can
# hang, and without it gloo's live threads can abort the exit ("terminate called without an active
# exception", exit -6), which failed this probe once in CI after every check had passed
from edgetune.tune.distributed import end_launched_process  # noqa: E402

end_launched_process(0)
