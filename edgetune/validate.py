"""Cheap structural checks of model files before a library opens them, so a truncated or corrupted
file gives one error naming the file and what is wrong (exit code 2), never a traceback or a hang.

safetensors: 8-byte header length, a JSON header within the file, each tensor's byte range inside
the data and matching its dtype and shape. GGUF: magic, version, counts, every key/value and tensor
record within the file, tensor data inside the file. JSON files (config, tokenizer): parse errors
with line and column.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from edgetune.errors import InputError

DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip
JSON_FILES = ("config.json", "generation_config.json", "tokenizer_config.json", "tokenizer.json",
              "special_tokens_map.json", "model.safetensors.index.json", "adapter_config.json")  # fmt: skip


def check_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}:{e.colno}: invalid JSON ({e.msg})") from None
    except RecursionError:
        raise InputError(f"{path}: JSON nested too deeply to read") from None
    if not isinstance(value, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def check_safetensors(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise InputError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100 * 2**20:
            raise InputError(f"{path}: corrupt safetensors header (claims {n} header bytes, file has {size})")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise InputError(f"{path}: corrupt safetensors header (not JSON)") from None
    if not isinstance(header, dict):
        raise InputError(f"{path}: corrupt safetensors header (not an object)")
    data = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = info["data_offsets"]
            count = 1
            for d in info["shape"]:
                count *= int(d)
            width = DTYPE_BYTES[info["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{path}: tensor {name!r}: malformed header entry") from None
        if not (0 <= start <= end <= data):
            raise InputError(
                f"{path}: tensor {name!r}: bytes {start}..{end} outside the data ({data} bytes); truncated?"
            )
        if end - start != count * width:
            raise InputError(
                f"{path}: tensor {name!r}: {end - start} bytes for {info['shape']} {info['dtype']}"
            )


def check_model_dir(path: Path) -> None:
    for name in JSON_FILES:
        if (path / name).is_file():
            check_json(path / name)
    for weights in sorted(path.glob("*.safetensors")):
        check_safetensors(weights)


def damage(path: Path) -> str | None:
    """What check_model_dir finds wrong with a model folder edgetune wrote (a merged model
    truncated or changed by hand), or None: a run makes such a folder again rather than fail on it."""
    try:
        check_model_dir(path)
    except InputError as exc:
        return str(exc)
    return None


# the peft types whose merge_and_unload folds the adapter into the base's own weights, leaving the
# base's architecture (each one checked with peft 0.21: the merged model's logits are the adapter
# model's, its tensors the base's). Prompt, prefix and p-tuning add virtual tokens at run time, and
# adaption prompt, Poly, X-LoRA and others act per input: there is nothing to fold in (merge met an
# AttributeError or an IndexError deep in peft). A type not listed is refused: a refusal, where an
# unknown type could have merged into a model that is not the tuned one.
MERGEABLE_PEFT_TYPES = (
    "LORA", "ADALORA", "IA3", "LOHA", "LOKR", "OFT", "BOFT", "VERA", "HRA", "FOURIERFT", "VBLORA",
    "RANDLORA", "SHIRA", "C3A", "MISS", "ROAD", "WAVEFT", "DELORA", "GRALORA", "LN_TUNING",
    "TRAINABLE_TOKENS",
)  # fmt: skip


def check_adapter_dir(path: Path) -> None:
    """A peft adapter (adapter_config.json + adapter_model.safetensors) that peft can open and
    fold into the base's weights."""
    config = path / "adapter_config.json"
    if not config.is_file():
        raise InputError(f"{path}: no adapter_config.json: not a LoRA adapter directory")
    settings = check_json(config)
    if "peft_type" not in settings:
        raise InputError(f"{config}: no peft_type: not a peft adapter config")
    kind = settings["peft_type"]
    if kind not in MERGEABLE_PEFT_TYPES:
        raise InputError(
            f"{config}: peft_type {kind!r} is an adapter peft cannot fold into the model's weights; "
            f"edgetune merges only those it can ({', '.join(MERGEABLE_PEFT_TYPES)}; LoRA with DoRA or "
            "rsLoRA too): train one of those (edgetune tune trains LoRA)"
        )
    if settings.get("alora_invocation_tokens"):
        raise InputError(
            f"{config}: an activated LoRA (alora_invocation_tokens), which acts only after its "
            "invocation tokens, is one peft cannot fold into the model's weights; edgetune merges only "
            "those it can: train a plain LoRA (edgetune tune trains one)"
        )
    weights = path / "adapter_model.safetensors"
    if not weights.is_file():
        raise InputError(f"{path}: no adapter_model.safetensors (the adapter's weights) beside its config")
    check_safetensors(weights)


# GGUF value types: 0 u8, 1 i8, 2 u16, 3 i16, 4 u32, 5 i32, 6 f32, 7 bool, 8 string, 9 array,
# 10 u64, 11 i64, 12 f64
_GGUF_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


class _Cursor:
    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise InputError(
                f"{self.path}: truncated or corrupt GGUF while reading {what} at byte {self.pos}"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return struct.unpack("<Q", self.take(8, what))[0]

    def string(self, what: str) -> str:
        n = self.u64(what)
        try:
            return self.take(n, what).decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{self.path}: {what} is not UTF-8 (byte {self.pos})") from None

    def value(self, kind: int, key: str, depth: int = 0) -> None:
        if kind in _GGUF_SCALAR:
            self.take(_GGUF_SCALAR[kind], key)
        elif kind == 8:
            self.string(key)
        elif kind == 9 and depth == 0:
            item, count = self.u32(key), self.u64(key)
            if item in _GGUF_SCALAR:  # one bounds check for the whole array
                self.take(_GGUF_SCALAR[item] * count, key)
            else:
                for _ in range(count):
                    self.value(item, key, depth + 1)
        else:
            raise InputError(f"{self.path}: key {key!r} has unknown value type {kind}")


def check_gguf(path: Path, max_header_bytes: int = 512 * 2**20) -> None:
    """Walk the GGUF header (key/values and tensor records) with bounds checks on every read."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        data = f.read(min(size, max_header_bytes))
    c = _Cursor(data, path)
    if c.take(4, "the magic") != b"GGUF":
        raise InputError(f"{path}: not a GGUF file (bad magic)")
    version = c.u32("the version")
    if version not in (2, 3):
        raise InputError(f"{path}: unsupported GGUF version {version}")
    n_tensors, n_kv = c.u64("the tensor count"), c.u64("the key count")
    if n_tensors > 1_000_000 or n_kv > 1_000_000:
        raise InputError(f"{path}: corrupt GGUF header ({n_tensors} tensors, {n_kv} keys)")
    alignment = 32
    for _ in range(n_kv):
        key = c.string("a key name")
        kind = c.u32(f"the type of {key!r}")
        start = c.pos
        c.value(kind, key)
        if key == "general.alignment" and kind == 4:
            alignment = struct.unpack("<I", data[start : start + 4])[0] or 32
    records = []
    for _ in range(n_tensors):
        name = c.string("a tensor name")
        dims = c.u32(f"the rank of {name!r}")
        if dims > 8:
            raise InputError(f"{path}: tensor {name!r} has rank {dims}")
        count = 1
        for _ in range(dims):
            count *= c.u64(f"the shape of {name!r}")
        kind = c.u32(f"the type of {name!r}")
        records.append((name, count, kind, c.u64(f"the offset of {name!r}")))
    data_start = -(-c.pos // alignment) * alignment
    for name, count, kind, offset in records:
        end = data_start + offset + _tensor_bytes(path, name, count, kind)
        if end > size:
            raise InputError(
                f"{path}: tensor {name!r} ends at byte {end}, past the end of the file ({size}); truncated?"
            )


def _tensor_bytes(path: Path, name: str, count: int, kind: int) -> int:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        block, width = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
    except (ValueError, KeyError):
        raise InputError(f"{path}: tensor {name!r} has unknown type {kind}") from None
    return count // block * width
