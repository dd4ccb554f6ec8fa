"""Architectures the GGUF converter supports, keyed by the HF `architectures` name.

Each entry says which llama.cpp architecture it becomes and whether Q and K projections need
llama.cpp's rotary permutation (Llama-style "rotate half" checkpoints, run by llama.cpp with
interleaved pairs). A family whose checkpoint differs from llama.cpp's graph in more than names has
two override points: `hparams` writes (or refuses) its own keys, `tensor` rewrites a tensor's
values. Adding a model family is one entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gguf
import numpy as np

from edgetune.errors import InputError


@dataclass(frozen=True)
class ArchSpec:
    gguf_arch: gguf.MODEL_ARCH
    permute_qk: bool  # HF Llama layout -> llama.cpp's interleaved rope layout
    hparams: Callable[[gguf.GGUFWriter, Any], None] | None = None  # after the common keys
    tensor: Callable[[str, np.ndarray], np.ndarray] | None = None  # (HF name, data) -> data
    rope_scaling: tuple[str, ...] = ()  # rope_scaling kinds beyond "linear" that llama.cpp's graph takes
    full_attention: bool = False  # llama.cpp's graph ignores the checkpoint's sliding window
    attention_bias: bool = True  # llama.cpp's graph loads q/k/v/o biases (where the checkpoint has them)
    free_head_dim: bool = True  # llama.cpp's graph takes a head_dim other than hidden_size / heads


def config_file(config: Any) -> str:
    """The config.json a problem is found in, for the one line that names it."""
    return f"{getattr(config, '_name_or_path', '') or 'model'}/config.json"


def refuse_unloadable(config: Any, spec: ArchSpec, arch: str) -> None:
    """What llama.cpp's graph for `arch` would refuse to load ("wrong shape", "wrong number of
    tensors"): refused here, before any tensor is read, with the config field named."""
    where = config_file(config)
    graph = f"llama.cpp's {gguf.MODEL_ARCH_NAMES[spec.gguf_arch]} graph"
    head_dim, heads = attention_head_dim(config), config.num_attention_heads
    if not spec.free_head_dim and head_dim * heads != config.hidden_size:
        raise InputError(
            f"{where}: head_dim {head_dim} x {heads} heads is not hidden_size {config.hidden_size} "
            f"({graph} needs them equal)"
        )
    if not spec.attention_bias and getattr(config, "attention_bias", False):
        raise InputError(f"{where}: attention_bias is true ({graph} has no attention biases)")
    scaling = getattr(config, "rope_scaling", None)
    kind = (scaling.get("rope_type") or scaling.get("type")) if scaling else "default"
    if kind not in ("default", "linear", *spec.rope_scaling):
        raise InputError(f"{where}: rope scaling {kind!r} is not supported for GGUF export of {arch}")


def gemma3_hparams(writer: gguf.GGUFWriter, config: Any) -> None:
    """Gemma 3's sliding-window layers, their own rope base, and the checks that llama.cpp's Gemma 3
    graph computes what this checkpoint does (it hard-codes the activation and the query scale)."""
    where = config_file(config)
    head_dim = config.head_dim
    # llama.cpp scales queries by 1/sqrt(head_dim), except for the 62-layer (27B) model
    expected = config.hidden_size / config.num_attention_heads if config.num_hidden_layers == 62 else head_dim
    problems = []
    if float(config.query_pre_attn_scalar) != float(expected):
        problems.append(f"query_pre_attn_scalar {config.query_pre_attn_scalar} (llama.cpp uses {expected:g})")
    if getattr(config, "attn_logit_softcapping", None):
        problems.append("attn_logit_softcapping is set (llama.cpp's Gemma 3 graph has none)")
    if getattr(config, "hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        problems.append(f"hidden_activation {config.hidden_activation!r} (llama.cpp uses gelu_pytorch_tanh)")
    if getattr(config, "use_bidirectional_attention", False):
        problems.append("use_bidirectional_attention (an embedding model, not a causal LM)")
    if problems:
        raise InputError(f"{where}: not exportable to GGUF as Gemma 3: {'; '.join(problems)}")
    if getattr(config, "final_logit_softcapping", None):
        writer.add_final_logit_softcapping(float(config.final_logit_softcapping))
    layer_types = list(getattr(config, "layer_types", None) or [])
    if config.sliding_window and "sliding_attention" in layer_types:
        writer.add_sliding_window(int(config.sliding_window))
        # per layer, as the checkpoint says (llama.cpp would otherwise assume every 6th is global)
        writer.add_sliding_window_pattern([t == "sliding_attention" for t in layer_types])
        writer.add_rope_freq_base_swa(float(config.rope_local_base_freq))


def phi3_hparams(writer: gguf.GGUFWriter, config: Any) -> None:
    """Phi-3's original context and sliding window, and the long-context (longrope) rotary factors
    of Phi-3.5 and Phi-4-mini: llama.cpp takes them as two tensors, the short factors while its
    context fits the original one and the long ones beyond, with one attention factor for both."""
    where = config_file(config)
    if getattr(config, "hidden_act", "silu") != "silu":
        raise InputError(f"{where}: hidden_act {config.hidden_act!r} (llama.cpp's Phi-3 graph uses silu)")
    writer.add_rope_scaling_orig_ctx_len(original_context(config))
    # llama.cpp's Phi-3 graph attends to the whole context (it turns the window off with a warning):
    # the file's context is the window then (see gguf_convert.context_length)
    writer.add_sliding_window(int(getattr(config, "sliding_window", None) or 0))
    scaling = longrope(config)
    if scaling is None:
        return
    # transformers checked the factor lists against the rotary dimensions when it read the config,
    # and computes the attention factor (given, or from the context ratio) as the model applies it
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    _, attention = ROPE_INIT_FUNCTIONS["longrope"](config, "cpu")
    writer.add_rope_scaling_attn_factors(float(attention))
    for kind, factors in (
        (gguf.MODEL_TENSOR.ROPE_FACTORS_LONG, scaling["long_factor"]),
        (gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT, scaling["short_factor"]),
    ):
        writer.add_tensor(gguf.TENSOR_NAMES[kind] + ".weight", np.asarray(factors, dtype=np.float32))


def longrope(config: Any) -> dict | None:
    """The rope_scaling of a longrope (Phi-3.5, Phi-4-mini) checkpoint, None for any other."""
    scaling = getattr(config, "rope_scaling", None) or {}
    return scaling if (scaling.get("rope_type") or scaling.get("type")) == "longrope" else None


def original_context(config: Any) -> int:
    return int(getattr(config, "original_max_position_embeddings", None) or config.max_position_embeddings)


def faithful_context(config: Any) -> int | None:
    """Where llama.cpp's context size itself changes what it computes: past a longrope model's
    original context it takes the long factors for every position, whatever the prompt's length
    (transformers takes them only for sequences that long). None where no such limit exists."""
    return original_context(config) if longrope(config) else None


def attention_head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def rope_dims(config: Any) -> int:
    """How many of each head's dimensions the rotary embedding turns (Phi-4-mini: three quarters)."""
    return int(attention_head_dim(config) * float(getattr(config, "partial_rotary_factor", None) or 1.0))


def gemma_norm(name: str, data: np.ndarray) -> np.ndarray:
    """Gemma's RMSNorm multiplies by (1 + weight); llama.cpp's multiplies by the stored weight."""
    return data + 1.0 if name.endswith("norm.weight") else data


REGISTRY: dict[str, ArchSpec] = {
    # Llama 2/3, SmolLM, TinyLlama; Llama 3.1's rope scaling goes in as a rope_freqs tensor
    "LlamaForCausalLM": ArchSpec(gguf.MODEL_ARCH.LLAMA, permute_qk=True, rope_scaling=("llama3",)),
    # llama.cpp runs Mistral as llama, with no sliding window (Mistral-7B-v0.1 has one of 4096)
    "MistralForCausalLM": ArchSpec(
        gguf.MODEL_ARCH.LLAMA, permute_qk=True, rope_scaling=("llama3",), full_attention=True
    ),
    # Qwen2/3's use_sliding_window (off in the released checkpoints) is not in llama.cpp's graphs either
    "Qwen2ForCausalLM": ArchSpec(gguf.MODEL_ARCH.QWEN2, False, full_attention=True, free_head_dim=False),
    "Qwen3ForCausalLM": ArchSpec(gguf.MODEL_ARCH.QWEN3, False, full_attention=True, attention_bias=False),
    # the text-only Gemma 3 checkpoints (270M, 1B); the larger ones are vision models
    "Gemma3ForCausalLM": ArchSpec(
        gguf.MODEL_ARCH.GEMMA3, False, gemma3_hparams, gemma_norm, attention_bias=False
    ),
    # Phi-3, Phi-3.5 and Phi-4-mini: fused qkv_proj and gate_up_proj, which llama.cpp takes fused too
    "Phi3ForCausalLM": ArchSpec(
        gguf.MODEL_ARCH.PHI3,
        False,
        phi3_hparams,
        rope_scaling=("longrope",),
        full_attention=True,
        free_head_dim=False,
    ),
}


def arch_for(config: Any) -> tuple[str, ArchSpec]:
    names = list(getattr(config, "architectures", None) or [])
    for name in names:
        if name in REGISTRY:
            return name, REGISTRY[name]
    got = ", ".join(names) or getattr(config, "model_type", "unknown")
    raise InputError(f"architecture {got} is not supported for GGUF export; supported: {', '.join(REGISTRY)}")


def permute_rope(weights, n_head: int):
    """HF stores each head's rotary dims as two halves; llama.cpp expects them interleaved in pairs."""
    rows = weights.shape[0]
    return (
        weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )
