"""Loading a base model for training: LoRA in full precision, or QLoRA on a 4-bit NF4 base."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetune.config import LoraConfig as LoraSettings
from edgetune.errors import InputError
from edgetune.models import ResolvedModel, load_causal_lm
from edgetune.tune.distributed import under_deepspeed, under_fsdp


@dataclass
class TrainSetup:
    method: str  # "lora" | "qlora"
    device: str  # "cpu" | "cuda"
    dtype: str  # weights of the frozen base: "float32" | "bfloat16" | "nf4"
    bf16: bool  # autocast / compute in bf16
    optim: str
    warnings: list[str]


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-BF16: bf16 matmuls are native, so autocast pays off on this CPU."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def choose_setup(method: str, precision: str = "auto") -> TrainSetup:
    import torch

    cuda = torch.cuda.is_available()
    has_bnb = importlib.util.find_spec("bitsandbytes") is not None
    warnings: list[str] = []
    if method == "auto":
        method = "qlora" if cuda and has_bnb and not under_deepspeed() else "lora"
    if method == "qlora":
        if under_deepspeed():
            raise InputError(
                "train.method=qlora is not supported under DeepSpeed here (ZeRO-3 would have to partition "
                "4-bit weights); use train.method=lora, or FSDP for a sharded 4-bit base "
                "(examples/accelerate/fsdp_qlora.yaml in edgetune's repository)"
            )
        if not has_bnb:
            raise InputError("train.method=qlora needs bitsandbytes: pip install bitsandbytes")
        if not cuda:
            warnings.append(
                "QLoRA on a CPU runs, but bitsandbytes' 4-bit kernels are about 30x slower there "
                "than fp32 LoRA; train.method=lora is the CPU path"
            )
        bf16 = cuda and torch.cuda.is_bf16_supported() and precision != "fp32"
        return TrainSetup(
            "qlora",
            "cuda" if cuda else "cpu",
            "nf4",
            bf16,
            "paged_adamw_8bit" if cuda else "adamw_torch",
            warnings,
        )
    if cuda:
        bf16 = torch.cuda.is_bf16_supported() and precision != "fp32"
        return TrainSetup("lora", "cuda", "bfloat16" if bf16 else "float32", bf16, "adamw_torch", warnings)
    bf16 = {"auto": cpu_has_fast_bf16(), "bf16": True, "fp32": False}[precision]
    if precision == "bf16" and not cpu_has_fast_bf16():
        warnings.append(
            "train.precision=bf16 on a CPU without native bf16 (AVX512-BF16 or AMX): autocast emulates "
            "it, typically slower than fp32; precision auto picks fp32 here"
        )
    return TrainSetup("lora", "cpu", "float32", bf16, "adamw_torch", warnings)


def lora_config(settings: LoraSettings):
    from peft import LoraConfig

    targets = settings.target_modules
    if isinstance(targets, str) and targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        use_rslora=settings.rslora,
        use_dora=settings.dora,
        bias="none",
        task_type="CAUSAL_LM",
    )


def keep_gradients_through_4bit_weights(model) -> None:
    """Stop bitsandbytes repacking 4-bit weights for its CPU inference kernel.

    On CPUs with AVX512-BF16, the first forward pass in eval mode (our validation loss before
    training) converts each Linear4bit weight in place to a layout whose kernel has no backward:
    every training step after it silently loses the gradient through the frozen base weights
    (measured on the tiny model: LoRA gradients off by 139%).
    """
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False


def _checkpointing_kwargs_name(prepare) -> str:
    """peft 0.22 renamed prepare_model_for_kbit_training's gradient_checkpointing_kwargs (a
    FutureWarning on every QLoRA tune; gone in peft 1.2): the name the installed peft takes."""
    import inspect

    new = "activation_checkpointing_kwargs"
    return new if new in inspect.signature(prepare).parameters else "gradient_checkpointing_kwargs"


def load_for_training(
    model: ResolvedModel,
    setup: TrainSetup,
    settings: LoraSettings,
    trust_remote_code: bool = False,
    gradient_checkpointing: bool | None = None,
) -> Any:
    """The frozen base (4-bit for QLoRA) with fresh LoRA adapters, ready for the Trainer.

    gradient_checkpointing: None turns it on for QLoRA on a GPU (where memory is the point). It is
    the non-reentrant kind, which DDP and FSDP handle without extra flags."""
    import torch
    from peft import get_peft_model, prepare_model_for_kbit_training

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if setup.method == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if setup.bf16 else torch.float32,
            # FSDP can only shard the 4-bit weights when they are stored in a float type
            bnb_4bit_quant_storage=torch.bfloat16 if under_fsdp() else torch.uint8,
        )
        if not under_fsdp():  # FSDP places the shards itself
            local = int(os.environ.get("LOCAL_RANK", "0"))  # one GPU per process under DDP
            kwargs["device_map"] = {"": local} if setup.device == "cuda" else {"": "cpu"}
        # under FSDP every parameter of a wrapped unit needs one dtype: that of the bf16-stored 4-bit weights
        kwargs["dtype"] = torch.bfloat16 if setup.bf16 or under_fsdp() else torch.float32
    else:
        kwargs["dtype"] = getattr(torch, setup.dtype)
    base = load_causal_lm(model.path, **kwargs)
    base.name_or_path = str(model.files)  # what the adapter's config names: the user's folder, not a view
    base.config.use_cache = False  # the KV cache is useless in training and costs memory
    if gradient_checkpointing is None:
        gradient_checkpointing = setup.method == "qlora" and setup.device == "cuda"
    checkpointing = {"use_reentrant": False}
    if setup.method == "qlora":
        keep_gradients_through_4bit_weights(base)
    # peft's k-bit preparation casts the norms to fp32, and FSDP refuses a unit that mixes them with
    # the bf16-stored 4-bit weights: under FSDP only gradient checkpointing is set up
    if setup.method == "qlora" and not under_fsdp():
        base = prepare_model_for_kbit_training(
            base,
            use_gradient_checkpointing=gradient_checkpointing,
            **{_checkpointing_kwargs_name(prepare_model_for_kbit_training): checkpointing},
        )
    elif gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
    if under_fsdp():
        from edgetune.tune.distributed import see_through_fsdp

        see_through_fsdp()  # else checkpoints and the adapter are written empty
    config = lora_config(settings)
    refuse_a_rank_past_its_layers(base, config.target_modules, settings.r)
    try:
        peft_model = get_peft_model(base, config)
    except ValueError as exc:  # e.g. target modules not found
        raise InputError(f"train.lora: {exc}") from None
    if unmatched := unmatched_targets(config.target_modules, peft_model.base_model.targeted_module_names):
        raise InputError(  # peft refuses a list none of whose names match, not one that matches in part
            f"train.lora.target_modules: {', '.join(unmatched)} names no module of this model "
            f"(adapted: {', '.join(sorted({n.rsplit('.', 1)[-1] for n in peft_model.base_model.targeted_module_names}))})"
        )
    if tied := tied_adapter_targets(peft_model):
        raise InputError(
            f"train.lora.target_modules: {', '.join(tied)} shares its weight with the tied input "
            "embedding, so merging the adapter would change the embedding too and the merged model would "
            "not be the tuned one; leave it out"
        )
    return peft_model


def refuse_a_rank_past_its_layers(base, targets, r: int) -> None:
    """LoRA's update to a layer of in x out has rank at most min(in, out): a train.lora.r past the
    narrowest layer it adapts adds memory and no capacity (r=100000 filled 23 GB before the kernel
    killed the process, with no message)."""
    head = base.get_output_embeddings()
    widths = [
        min(module.in_features, module.out_features)
        for name, module in base.named_modules()
        if isinstance(getattr(module, "in_features", None), int)
        and isinstance(getattr(module, "out_features", None), int)
        and (
            module is not head
            if targets == "all-linear"
            else any(name == t or name.endswith("." + t) for t in targets)
        )
    ]
    if widths and r > min(widths):
        raise InputError(
            f"train.lora.r: {r} is more than {min(widths)}, the narrowest layer it adapts (an update's "
            "rank is at most its layer's smaller side): it would add memory and no capacity; 8 to 64 "
            "is usual"
        )


def unmatched_targets(requested, adapted: list[str]) -> list[str]:
    """The names of a target_modules list that match none of the adapted modules (peft matches a
    name to a module called so, at any depth); none for "all-linear"."""
    if isinstance(requested, str):
        return []
    return [
        name
        for name in requested
        if not any(module == name or module.endswith("." + name) for module in adapted)
    ]


def tied_adapter_targets(peft_model) -> list[str]:
    """Adapted modules whose base weight is the one a tied model's input embedding and LM head share
    (SmolLM2, Gemma 3, Qwen2.5-0.5B). Trained, the adapter changes one of the two; merged into the
    shared weight, it changes both."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    def unwrapped(module):
        return module.get_base_layer() if isinstance(module, BaseTunerLayer) else module

    model = peft_model.get_base_model()
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    if inputs is None or outputs is None:
        return []
    shared = unwrapped(inputs).weight
    if unwrapped(outputs).weight is not shared:
        return []
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, BaseTunerLayer) and getattr(module.get_base_layer(), "weight", None) is shared
    ]
