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
dist.barrier()
dist.destroy_process_group()
