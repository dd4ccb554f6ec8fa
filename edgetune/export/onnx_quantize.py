"""ONNX weight quantisation with onnxruntime's MatMulNBits (weight-only, blockwise).

Measured on SmolLM2-135M on this 2-core CPU (bench/onnx_variants.py): onnxruntime's dynamic int8
(QOperator MatMulInteger) decodes slower than fp32; weight-only 8-bit MatMulNBits with
accuracy_level 4 (int8 activations in the kernel) decodes ~2x faster than fp32 at KL ~5e-3.
Plain 4-bit everywhere costs KL ~0.3-0.5 on a 135M model, so int4 follows llama.cpp's Q4_K_M
idea: the layers that hurt most when rounded (v_proj, down_proj, the LM head) stay 8-bit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

LM_HEAD = "lm_head"


@dataclass
class NBitsPlan:
    """Which MatMuls get how many bits; embeddings (Gather) can only go to 4 bits in onnxruntime."""

    bits: int  # the default for every MatMul
    block_size: int = 32
    accuracy_level: int = 4
    eight_bit_layers: list[str] = field(default_factory=list)  # name parts kept at 8 bits
    quantize_embeddings: bool = False


def int8_plan(block_size: int = 32, accuracy_level: int = 4) -> NBitsPlan:
    return NBitsPlan(8, block_size, accuracy_level)


def int4_plan(
    block_size: int = 32,
    accuracy_level: int = 4,
    eight_bit_layers: list[str] | None = None,
    quantize_embeddings: bool = True,
) -> NBitsPlan:
    layers = DEFAULT_EIGHT_BIT if eight_bit_layers is None else eight_bit_layers
    return NBitsPlan(4, block_size, accuracy_level, list(layers), quantize_embeddings)


def _matmul_names(model) -> list[str]:
    return [n.name for n in model.graph.node if n.op_type == "MatMul"]


def _name_parts(node_name: str) -> list[str]:
    """A node's name in its parts (/model/layers.1/mlp/down_proj/MatMul -> model, layers, 1, ...)."""
    return node_name.replace("/", " ").replace(".", " ").split()


def _is_eight_bit(node_name: str, parts: list[str]) -> bool:
    return any(p in _name_parts(node_name) for p in parts)


def _quantize(model, bits: int, plan: NBitsPlan, exclude: list[str], ops: tuple[str, ...]):
    import numpy as np
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(
        model,
        bits=bits,
        block_size=plan.block_size,
        # 4-bit blocks keep a zero point (asymmetric: KL 0.10 vs 0.12 symmetric here); 8-bit needs none
        is_symmetric=bits == 8,
        accuracy_level=plan.accuracy_level,
        nodes_to_exclude=exclude,
        op_types_to_quantize=ops,
        quant_axes=(("MatMul", 0), ("Gather", 1)),
    )
    with np.errstate(divide="ignore", invalid="ignore"):  # all-zero blocks (a zeroed pad embedding)
        quantizer.process()
    return quantizer.model.model


# projections some architectures fuse: Phi-3 computes q, k and v in one qkv_proj
FUSED = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj"}


def _fused(parts: list[str], names: list[str]) -> list[str]:
    """The 8-bit layer names for this graph: where a named projection is fused into another
    (Phi-3's v_proj into qkv_proj), the fused one keeps 8 bits rather than the part losing them."""
    present = {p for n in names for p in _name_parts(n)}
    return [*parts, *{FUSED[p] for p in parts if p in FUSED and p not in present and FUSED[p] in present}]


DEFAULT_EIGHT_BIT = ("v_proj", "down_proj", LM_HEAD)


def refuse_unmatched_layers(parts: list[str], names: list[str]) -> None:
    """export.onnx.int4_8bit_layers names that match no MatMul of this graph (`v_projj`): the int4
    file had kept nothing at 8 bits, without a word. The defaults are left alone: another
    architecture's names differ (GPT-NeoX has no down_proj), and they keep what they match."""
    present = {p for n in names for p in _name_parts(n)}
    unmatched = [
        p for p in parts if p not in present and FUSED.get(p) not in present and p not in DEFAULT_EIGHT_BIT
    ]
    if unmatched:
        from edgetune.errors import InputError

        layers = sorted({p for p in present if p.endswith(("_proj", "lm_head", "fc1", "fc2", "dense"))})
        raise InputError(
            f"export.onnx.int4_8bit_layers: {', '.join(map(str, unmatched))} names no layer of this "
            f"model (its projection layers: {', '.join(layers) or 'none named so'})"
        )


def quantize_nbits(model, plan: NBitsPlan):
    """Quantise an fp32 decoder in memory according to `plan`; returns the new ModelProto."""
    from edgetune.export.onnx_graph import materialize_transposed_weights

    for name in ("onnxruntime.quantization", "onnxruntime.quantization.matmul_nbits_quantizer"):
        logging.getLogger(name).setLevel(logging.ERROR)
    materialize_transposed_weights(model)
    names = _matmul_names(model)
    if plan.bits == 4:
        refuse_unmatched_layers(plan.eight_bit_layers, names)
    eight = [n for n in names if plan.bits == 8 or _is_eight_bit(n, _fused(plan.eight_bit_layers, names))]
    if eight:
        model = _quantize(model, 8, plan, [n for n in names if n not in eight], ("MatMul",))
    if plan.bits == 4:
        ops = ("MatMul", "Gather") if plan.quantize_embeddings else ("MatMul",)
        model = _quantize(model, 4, plan, [], ops)
    return model


def to_fp16(model):
    """fp16 weights and compute with fp32 inputs/outputs (logits, KV cache): the CUDA target's file."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    converted = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)
    # the converter appends its input casts after the nodes that read them: onnxruntime runs such
    # a graph, but it is no valid ONNX (onnx.checker and stricter runtimes refuse it)
    graph = OnnxModel(converted)
    graph.topological_sort()
    return graph.model
