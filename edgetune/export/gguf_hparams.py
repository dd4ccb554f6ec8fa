"""A GGUF's architecture keys ({arch}.*) against the model it was made from.

The parity check measures logits on a few short prompts against goals per type: a file whose rope
base moved from 10000 to 11000, whose RMS norm epsilon moved from 1e-6 to 1e-5, or whose context
length says 32 where the model has 512 stays under those goals (or fails only as a KL number),
while llama.cpp front-ends size their context by the file and drift on longer prompts. So each key
is compared exactly with what edgetune's own converter writes for the merged model's config
(gguf_convert.write_hparams: one mapping, not a second copy of it).

Files from another converter (llama.cpp's own) leave out keys that llama.cpp then defaults, or write
keys edgetune's does not: only the keys both sides define are compared, by the name after the
architecture's prefix (the keys mean the same for every llama.cpp architecture).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from edgetune.errors import InputError

_FLOATS = (gguf.GGUFValueType.FLOAT32, gguf.GGUFValueType.FLOAT64)


@dataclass(frozen=True)
class ModelHparams:
    source: str  # the config.json the values come from, as the failure names it
    values: dict[str, gguf.GGUFValue]  # by key without the "{arch}." prefix
    # other values a key may hold in a file from llama.cpp's converter, as legitimate as edgetune's
    also: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    # the rotary settings llama.cpp takes as tensors (Llama 3's rope_freqs, longrope's factors), by
    # tensor name: a file must carry exactly these, with these values
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    rope_scaled: bool = False  # the config has a rope_scaling (else a file's must scale nothing)


# tensors that are settings, not weights: a file without them, or with them where the model has
# none, computes other rotations, which a few short prompts hardly show (Llama 3.1 files made before
# llama.cpp wrote rope_freqs lost their long-context scaling with a KL near zero)
SETTING_TENSORS = tuple(
    gguf.TENSOR_NAMES[t] + ".weight"
    for t in (
        gguf.MODEL_TENSOR.ROPE_FREQS,
        gguf.MODEL_TENSOR.ROPE_FACTORS_LONG,
        gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT,
    )
)
# where the model has no rope_scaling, the values of these keys that scale nothing in llama.cpp (its
# default type is linear, and a factor of 0 reads as 1)
_S, _F = gguf.GGUFValueType.STRING, gguf.GGUFValueType.FLOAT32
_UNSCALED = {
    "rope.scaling.type": (gguf.GGUFValue("none", _S), gguf.GGUFValue("linear", _S)),
    "rope.scaling.factor": (gguf.GGUFValue(0.0, _F), gguf.GGUFValue(1.0, _F)),
}


def model_hparams(model_dir: Path) -> ModelHparams | None:
    """The architecture keys edgetune's converter writes for `model_dir`'s config; None for a model
    it does not convert (its files are judged by their logits alone)."""
    from transformers import AutoConfig

    from edgetune.export.gguf_arch import arch_for, attention_head_dim, config_file
    from edgetune.export.gguf_convert import write_hparams

    try:
        config = AutoConfig.from_pretrained(str(model_dir))
        _, spec = arch_for(config)
        writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[spec.gguf_arch])
        write_hparams(writer, config, spec)
    except (InputError, OSError, ValueError):  # no file of edgetune's could be of this config
        return None
    prefix = f"{writer.arch}."
    values = {k.removeprefix(prefix): v for k, v in writer.kv_data[0].items() if k.startswith(prefix)}
    # the vocabulary's size is said better by the logits' width (bench.targets.refuse_another_width:
    # another model's file, both widths, and exit 2 for the wrong input it is)
    values.pop("vocab_size", None)
    # the converter leaves the key and value lengths out where they are llama.cpp's default (hidden
    # size / heads), which llama.cpp's own converter writes for some models
    head_dim = gguf.GGUFValue(attention_head_dim(config), gguf.GGUFValueType.UINT32)
    for key in ("attention.key_length", "attention.value_length"):
        values.setdefault(key, head_dim)
    # edgetune writes a sliding window as the context where llama.cpp attends to all of it
    # (gguf_convert.context_length); llama.cpp's converter writes max_position_embeddings: Phi-3-
    # mini-4k's own file says 4096 where edgetune's says 2047, Mistral-7B-v0.1's 32768, not 4096
    also = {"context_length": (int(config.max_position_embeddings),)}
    written = {name: info.tensor for name, info in writer.tensors[0].items() if info.tensor is not None}
    tensors = {
        name: np.asarray(written[name], dtype=np.float32) for name in SETTING_TENSORS if name in written
    }
    scaled = bool(getattr(config, "rope_scaling", None))
    return ModelHparams(config_file(config), values, also, tensors, scaled)


def hparam_mismatches(path: Path, expected: ModelHparams) -> list[str]:
    """One line per key of `path` that both sides define and that differs from the model's: "llama.
    rope.freq_base is 11000 in the file, 10000 in runs/x/merged/config.json"."""
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception:  # a damaged file: load_llama's header check names what is wrong with it
        return []
    stored = reader.get_field("general.architecture")
    arch = stored.contents() if stored is not None else None
    if not isinstance(arch, str):
        return []
    lines = []
    for suffix, want in expected.values.items():
        stored = reader.get_field(f"{arch}.{suffix}")
        if stored is None:
            continue
        got = stored.contents()
        if not _same(got, want) and not any(
            _same(got, gguf.GGUFValue(v, want.type)) for v in expected.also.get(suffix, ())
        ):
            lines.append(
                f"{arch}.{suffix} is {_shown(got, want)} in the file, "
                f"{_shown(want.value, want)} in {expected.source}"
            )
    for suffix, neutral in _UNSCALED.items() if not expected.rope_scaled else ():
        stored = reader.get_field(f"{arch}.{suffix}")
        if stored is not None and not any(_same(stored.contents(), v) for v in neutral):
            shown = _shown(stored.contents(), neutral[0])
            lines.append(f"{arch}.{suffix} is {shown} in the file; {expected.source} has no rope_scaling")
    return lines + _setting_tensor_mismatches(reader, expected)


def _setting_tensor_mismatches(reader: gguf.GGUFReader, expected: ModelHparams) -> list[str]:
    found = {t.name: t for t in reader.tensors if t.name in SETTING_TENSORS}
    lines = []
    for name in SETTING_TENSORS:
        want, tensor = expected.tensors.get(name), found.get(name)
        if want is None and tensor is not None:
            lines.append(f"the file has {name}, which {expected.source}'s rope settings do not give")
        elif want is not None and tensor is None:
            lines.append(f"the file has no {name}, which {expected.source}'s rope_scaling gives")
        elif want is not None and tensor is not None:
            if tensor.tensor_type != gguf.GGMLQuantizationType.F32:  # ggml's rope asserts it (SIGABRT)
                lines.append(
                    f"{name} is {tensor.tensor_type.name} in the file; llama.cpp takes it as F32 only"
                )
            elif int(tensor.n_elements) != want.size:
                lines.append(
                    f"{name} has {tensor.n_elements} values in the file; "
                    f"{expected.source}'s rope_scaling gives {want.size}"
                )
            else:
                got = np.asarray(tensor.data).reshape(want.shape)
                if not np.allclose(got, want, rtol=1e-5, atol=0):
                    worst = float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-30)))
                    lines.append(
                        f"{name} differs from {expected.source}'s rope_scaling (by up to {worst:.1%})"
                    )
    return lines


def _same(got, want: gguf.GGUFValue) -> bool:
    """Equal as the file stores the model's value: floats at float32 (the converter writes f32)."""
    try:
        if want.type in _FLOATS:
            return bool(np.float32(got) == np.float32(want.value))
        if want.type == gguf.GGUFValueType.ARRAY:
            return [_plain(v) for v in got] == [_plain(v) for v in want.value]
        return _plain(got) == _plain(want.value)
    except (TypeError, ValueError):  # another type than the model's (a string for a number)
        return False


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _shown(value, want: gguf.GGUFValue) -> str:
    if want.type in _FLOATS and isinstance(value, (int, float, np.number)) and math.isfinite(value):
        return str(np.float32(value)).removesuffix(".0")  # the float32 as short as it reads back
    return repr(value) if isinstance(value, str) else str(_plain(value))
