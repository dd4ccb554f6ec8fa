"""The recipe's export section: which formats and types, and how each is made."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from edgetune.export.gguf_quantize import QUANTS
from edgetune.typed import at_least, not_empty, positive_by_type

# written directly by the converter, then everything llama.cpp's quantiser makes for us
GGUF_QUANTS = ("f32", "f16", "bf16", *QUANTS)
ONNX_QUANTS = ("fp32", "fp16", "int8", "int4")


def type_names(names: list[str]) -> list[str]:
    """Export types as files are named: lower case, each once (Q8_0,q8_0 is one file)."""
    return list(dict.fromkeys(str(q).lower() for q in names))


@dataclass
class GGUFExportConfig:
    quants: list[str] = field(default_factory=lambda: ["q8_0", "q4_k_m"])
    imatrix: bool = True
    # quants whose token embedding and output head stay F16: on small models the tied head is a
    # fifth of the weights and the most sensitive (demo Q8_0: retention 98.6% -> 99.1%, 145 -> 171 MB)
    f16_output: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:  # spelled as files are named: a recipe's Q8_0 is not a new export
        self.quants, self.f16_output = type_names(self.quants), type_names(self.f16_output)

    def validate(self) -> list[str]:
        return [
            f"export.gguf.quants: unknown quant {q!r}; supported: {', '.join(GGUF_QUANTS)}"
            for q in self.quants
            if q.lower() not in GGUF_QUANTS
        ] + [
            f"export.gguf.f16_output: {q!r} is not a quantised type ({', '.join(QUANTS)})"
            for q in self.f16_output
            if q.lower() not in QUANTS
        ]


@dataclass
class OnnxExportConfig:
    quants: list[str] = field(default_factory=lambda: ["fp32", "int8", "int4"])
    int8_block_size: int = 32
    int4_block_size: int = 16  # KL 0.10 vs 0.15 at 32 on the demo, for 11% more bytes and ~20% less speed
    # onnxruntime's MatMulNBits accuracy level: 4 = int8 activations in the kernel (the fast one on
    # CPU: 0 decoded ~5x slower here), 0 = the weights' own float type
    int4_accuracy_level: int = 4
    int4_8bit_layers: list[str] = field(default_factory=lambda: ["v_proj", "down_proj", "lm_head"])
    int4_embeddings: bool = True  # 4-bit token embeddings (onnxruntime's GatherBlockQuantized)

    def __post_init__(self) -> None:
        self.quants = type_names(self.quants)

    def validate(self) -> list[str]:
        problems = [
            f"export.onnx.quants: unknown quant {q!r}; supported: {', '.join(ONNX_QUANTS)}"
            for q in self.quants
            if q.lower() not in ONNX_QUANTS
        ]
        for key in ("int8_block_size", "int4_block_size"):
            if getattr(self, key) not in (16, 32, 64, 128, 256):
                problems.append(f"export.onnx.{key}: must be 16..256, a power of 2, got {getattr(self, key)}")
        if self.int4_accuracy_level not in (0, 1, 2, 3, 4):
            problems.append(f"export.onnx.int4_accuracy_level: must be 0..4, got {self.int4_accuracy_level}")
        return problems


@dataclass
class ExportConfig:
    formats: list[Literal["gguf", "onnx"]] = field(default_factory=lambda: ["gguf", "onnx"])
    parity_examples: int = 8  # held-out examples each export is checked on against torch
    # type -> its parity check's KL goal, where this task's prompts sit above edgetune's (q8_0 0.006)
    parity_kl: dict[str, float] = field(default_factory=dict)
    gguf: GGUFExportConfig = field(default_factory=GGUFExportConfig)
    onnx: OnnxExportConfig = field(default_factory=OnnxExportConfig)

    def __post_init__(self) -> None:  # keyed as files are named: Q8_0's goal is q8_0's
        folded: dict[str, list] = {}
        for q, kl in dict(self.parity_kl or {}).items():
            folded.setdefault(str(q).lower(), []).append(kl)
        self._clashes = sorted(q for q, kls in folded.items() if len(set(map(repr, kls))) > 1)
        self.parity_kl = {q: kls[0] for q, kls in folded.items()}

    def validate(self) -> list[str]:
        problems = not_empty("export", self, "formats") + at_least("export", self, 1, "parity_examples")
        problems += [
            f"export.parity_kl: {q} is given two goals (types are read as files are named)"
            for q in self._clashes
        ]
        problems += positive_by_type(
            "export.parity_kl", self.parity_kl, (*GGUF_QUANTS, *ONNX_QUANTS, *foreign_gguf_types())
        )
        return problems + self.gguf.validate() + self.onnx.validate()


def foreign_gguf_types() -> tuple[str, ...]:
    """The GGUF types llama.cpp's own tools write beyond edgetune's (q4_1, q2_k, iq4_xs ...): a file
    of one has no parity goal of edgetune's, so export.parity_kl is where its goal is set."""
    from gguf import LlamaFileType

    names = (t.name.split("_", 1)[1].lower() for t in LlamaFileType if t is not LlamaFileType.GUESSED)
    return tuple(n for n in names if n not in GGUF_QUANTS)
