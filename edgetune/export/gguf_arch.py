"""Architectures the GGUF converter supports, keyed by the HF `architectures` name.

Each entry says which llama.cpp architecture it becomes, whether Q and K projections need
llama.cpp's rotary permutation (Llama-style "rotate half" checkpoints, run by llama.cpp with
interleaved pairs). Adding a model family is one entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gguf

from edgetune.errors import InputError


@dataclass(frozen=True)
class ArchSpec:
    gguf_arch: gguf.MODEL_ARCH
    permute_qk: bool  # HF Llama layout -> llama.cpp's interleaved rope layout


REGISTRY: dict[str, ArchSpec] = {
    "LlamaForCausalLM": ArchSpec(gguf.MODEL_ARCH.LLAMA, permute_qk=True),  # Llama 2/3, SmolLM, TinyLlama
    "MistralForCausalLM": ArchSpec(gguf.MODEL_ARCH.LLAMA, permute_qk=True),  # llama.cpp runs Mistral as llama
    "Qwen2ForCausalLM": ArchSpec(gguf.MODEL_ARCH.QWEN2, permute_qk=False),
    "Qwen3ForCausalLM": ArchSpec(gguf.MODEL_ARCH.QWEN3, permute_qk=False),
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
