"""A model saved by transformers 5 keeps its RoPE settings in config.json's `rope_parameters` and
writes no `rope_theta` or `rope_scaling`. The transformers 4 edgetune runs on (optimum-onnx 0.1.0
pins it below 4.58) reads such a file with its defaults, rope_theta 10000 and no scaling: Qwen3
(1e6), Llama 3 (500000 with llama3 scaling) or SmolLM3 load as another model, and tune, merge,
export and parity would all agree on the wrong one. So edgetune reads such a model through a view:
a folder in its cache whose config.json spells the same settings the 4.x way (tokenizer_config.json
too, where transformers 4 could not load the tokenizer) and whose other files link to the model's
own. The user's folder is never written.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

from edgetune.errors import ModelError

# Model types whose transformers 4 config reads rope_theta, rope_scaling and partial_rotary_factor
# as their transformers 5 rope_parameters mean them: checked one by one, tiny models saved by
# transformers 5.25 against the same through the view on 4.57 (logits equal). Others are refused:
# GPT-NeoX, say, reads its own keys (rotary_emb_base), and a view would change nothing.
CHECKED_MODEL_TYPES = {
    "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "gemma", "gemma2",
    "gemma3", "gemma3_text", "phi", "phi3", "stablelm", "olmo2", "granite", "smollm3", "cohere2",
    "starcoder2", "deepseek_v3",
}  # fmt: skip
# rope_type values that transformers 4 takes in rope_scaling with the same fields
SCALINGS_IN_ROPE_SCALING = {"linear", "dynamic", "yarn", "llama3"}
# Phi-3's own longrope form in transformers 4: exactly these three fields in rope_scaling, the
# original context as a top-level key
PHI3_LONGROPE = {"rope_type", "rope_theta", "partial_rotary_factor", "short_factor", "long_factor"}


def _reads_rope_parameters() -> bool:
    try:
        return int(metadata.version("transformers").split(".")[0]) >= 5
    except (metadata.PackageNotFoundError, ValueError):
        return False


def _cannot(where: str, what: str) -> ModelError:
    return ModelError(
        f"{where}: {what}, written by transformers 5, which the transformers 4 edgetune runs on "
        "cannot be told the same way; it would load the model with other rotary embeddings"
    )


def _as_4x(rope: dict, where: str, model_type: str | None = None) -> dict:
    """One rope_parameters entry as transformers 4's keys."""
    kind = rope.get("rope_type", rope.get("type", "default"))
    if (
        kind == "longrope"
        and model_type == "phi3"
        and set(rope) - PHI3_LONGROPE <= {"original_max_position_embeddings"}
    ):
        keys = {
            k: rope[k]
            for k in ("rope_theta", "partial_rotary_factor", "original_max_position_embeddings")
            if k in rope
        }
        scaling = {
            "type": "longrope",
            "short_factor": rope["short_factor"],
            "long_factor": rope["long_factor"],
        }
        return {**keys, "rope_scaling": scaling}
    if kind != "default" and kind not in SCALINGS_IN_ROPE_SCALING:
        raise _cannot(where, f"rope_parameters of type {kind!r}")
    keys: dict = {}
    if "rope_theta" in rope:
        keys["rope_theta"] = rope["rope_theta"]
    if "partial_rotary_factor" in rope:
        keys["partial_rotary_factor"] = rope["partial_rotary_factor"]
    scaling = {k: v for k, v in rope.items() if k not in ("rope_theta", "partial_rotary_factor", "type")}
    if kind == "default" and set(scaling) - {"rope_type"}:  # e.g. Qwen2-VL's mrope_section
        raise _cannot(where, f"rope_parameters with {sorted(set(scaling) - {'rope_type'})}")
    keys["rope_scaling"] = None if kind == "default" else {**scaling, "rope_type": kind}
    return keys


def as_transformers4(config: dict, where: str) -> dict:
    """`config` with its rope_parameters also spelled as transformers 4 reads them (a multimodal
    model's text_config too); the same dict where there is nothing to spell."""
    out = dict(config)
    if isinstance(config.get("text_config"), dict):
        out["text_config"] = as_transformers4(config["text_config"], f"{where} (text_config)")
    rope = config.get("rope_parameters")
    # transformers 5 itself takes a rope_scaling that is set (added by hand, as Qwen's docs tell
    # for YaRN, or kept by a transformers 4 save) over rope_parameters: so does transformers 4
    if not isinstance(rope, dict) or config.get("rope_scaling"):
        return out
    model_type = config.get("model_type")
    if model_type not in CHECKED_MODEL_TYPES:
        raise _cannot(where, f"rope_parameters of a {model_type!r} model")
    if any(isinstance(v, dict) for v in rope.values()):  # per layer type
        unknown = sorted(set(rope) - {"full_attention", "sliding_attention"})
        if unknown or model_type not in ("gemma3", "gemma3_text"):
            raise _cannot(where, f"rope_parameters per layer type ({', '.join(sorted(rope))})")
        out.update(_as_4x(rope.get("full_attention", {}), where))
        sliding = rope.get("sliding_attention")
        if sliding:
            local = _as_4x(sliding, where)
            if local["rope_scaling"] is not None:
                raise _cannot(where, "scaled RoPE on sliding-window layers")
            out["rope_local_base_freq"] = local["rope_theta"]
    else:
        out.update(_as_4x(rope, where, model_type))
    return out


def tokenizer_config_as_transformers4(config: dict, where: str = "") -> dict:
    """transformers 5 names its tokenizer.json-backed class TokenizersBackend (transformers 4 refuses
    to load it: PreTrainedTokenizerFast is the same) and lists extra special tokens where
    transformers 4 expects a mapping of names (it fails on the list)."""
    out = dict(config)
    if out.get("tokenizer_class") == "TokenizersBackend":
        out["tokenizer_class"] = "PreTrainedTokenizerFast"
    extra = out.get("extra_special_tokens")
    if isinstance(extra, list):
        del out["extra_special_tokens"]
        listed = list(out.get("additional_special_tokens") or [])
        out["additional_special_tokens"] = listed + [t for t in extra if t not in listed]
    return out


def readable_model_dir(path: Path) -> Path:
    """`path`, or the cached view of it whose config files transformers 4 reads as transformers 5
    meant them: the same RoPE, the same tokenizer."""
    if _reads_rope_parameters() or not (path / "config.json").is_file():
        return path
    from edgetune.validate import check_json

    rewritten = {}
    for name, spell in (
        ("config.json", as_transformers4),
        ("tokenizer_config.json", tokenizer_config_as_transformers4),
    ):
        if not (path / name).is_file():
            continue
        config = check_json(path / name)
        spelled = spell(config, str(path / name))
        if spelled != config:
            rewritten[name] = json.dumps(spelled, indent=2, sort_keys=True) + "\n"
    if not rewritten:
        return path
    names = "\0".join(sorted(p.name for p in path.iterdir()))  # a file added later: another view
    key = "\0".join([str(path.resolve()), names, *(f"{n}\0{t}" for n, t in sorted(rewritten.items()))])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    from edgetune.models import cache_dir

    view = cache_dir() / "transformers4-configs" / digest / path.resolve().name
    if not view.is_dir():
        _write_view(path.resolve(), view, rewritten)
    return view


def _write_view(source: Path, view: Path, rewritten: dict[str, str]) -> None:
    """The view appears whole or not at all: made aside, then renamed into place. Not rundir's
    atomic_dir, which replaces what is there: two processes making the same view at once, the second
    would remove the first's while it reads through it; here the first one made stays."""
    import shutil
    import tempfile

    from edgetune.rundir import give_modes

    view.parent.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=view.parent.parent, prefix=f".{view.parent.name}.", suffix=".tmp"))
    try:
        folder = staging / view.name
        folder.mkdir()
        for entry in source.iterdir():
            if entry.name not in rewritten:
                (folder / entry.name).symlink_to(entry)
        for name, text in rewritten.items():
            (folder / name).write_text(text)
        give_modes(staging)  # mkdtemp's 700 would keep a shared cache from other users
        os.replace(staging, view.parent)
    except OSError:
        if not view.is_dir():  # not another process's view, made first: a real failure
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
