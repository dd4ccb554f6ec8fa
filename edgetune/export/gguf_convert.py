"""Our HF -> GGUF converter (F32, F16, BF16), on the `gguf` package's writer and name maps.

Quantised types are made from the F16/F32 file by llama.cpp's own quantiser, never here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from edgetune import __version__
from edgetune.errors import EdgetuneError, InputError, ModelError, writing
from edgetune.export.gguf_arch import (
    ArchSpec,
    arch_for,
    attention_head_dim,
    permute_rope,
    refuse_unloadable,
    rope_dims,
)
from edgetune.export.gguf_vocab import read_vocab
from edgetune.rundir import fsync_file, mode_for

OUTTYPES = {
    "f32": (gguf.LlamaFileType.ALL_F32, gguf.GGMLQuantizationType.F32),
    "f16": (gguf.LlamaFileType.MOSTLY_F16, gguf.GGMLQuantizationType.F16),
    "bf16": (gguf.LlamaFileType.MOSTLY_BF16, gguf.GGMLQuantizationType.BF16),
}


def _tensor_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / n for n in names]
    single = model_dir / "model.safetensors"
    if not single.is_file():
        raise InputError(f"{model_dir}: no model.safetensors (edgetune exports safetensors checkpoints only)")
    return [single]


def _iter_tensors(model_dir: Path):
    from safetensors import safe_open

    for path in _tensor_files(model_dir):
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise InputError(f"{path}: unreadable safetensors file ({exc})") from None


def refuse_missing_weights(model_dir: Path, config: Any) -> None:
    """The tensors the config calls for that the checkpoint lacks (an untied config without
    lm_head.weight), found before any file is written: llama.cpp would run the file (its graphs
    reuse the embedding for a missing head), while transformers starts them random, so the file
    matched no model. The same rule as models.load_causal_lm, from the safetensors headers and an
    empty (meta-device) model of the config."""
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    present: set[str] = set()
    for path in _tensor_files(model_dir):
        try:
            with safe_open(str(path), framework="pt") as f:
                present.update(f.keys())
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise InputError(f"{path}: unreadable safetensors file ({exc})") from None
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception:  # a config transformers cannot build: the conversion names what it lacks
        return
    prefix = f"{model.base_model_prefix}."
    present |= {n.removeprefix(prefix) for n in present} | {prefix + n for n in present}
    optional = [re.compile(p) for p in model._keys_to_ignore_on_load_missing or ()]
    if getattr(config, "tie_word_embeddings", False):
        optional += [re.compile(re.escape(k)) for k in _tied_keys(model)]
    missing = sorted(
        name
        for name in model.state_dict()
        if name not in present and not any(p.search(name) for p in optional)
    )
    if missing:
        raise ModelError(
            f"{model_dir}: its weights lack {len(missing)} tensor(s) its config.json calls for (e.g. "
            f"{missing[0]}), which would start random: the config does not fit the weights; save the "
            "model with its config again (save_pretrained), or fix config.json (tie_word_embeddings)"
        )


def _tied_keys(model) -> list[str]:
    keys = getattr(model, "_tied_weights_keys", None) or []
    return list(keys.keys()) if isinstance(keys, dict) else list(keys)


def write_hparams(writer: gguf.GGUFWriter, config: Any, spec: ArchSpec) -> None:
    """The architecture's keys ({arch}.*) the file carries for `config`: the common ones, then the
    family's own (spec.hparams). The parity check compares a file's keys with these."""
    _write_common_hparams(writer, config, spec)
    if spec.hparams:
        spec.hparams(writer, config)


def _write_common_hparams(writer: gguf.GGUFWriter, config: Any, spec: ArchSpec) -> None:
    n_head = config.num_attention_heads
    head_dim = attention_head_dim(config)
    writer.add_context_length(context_length(config, spec))
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or n_head)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(getattr(config, "rope_theta", 10000.0))
    writer.add_rope_dimension_count(rope_dims(config))
    if head_dim != config.hidden_size // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_vocab_size(config.vocab_size)
    scaling = getattr(config, "rope_scaling", None)
    if scaling:
        kind = scaling.get("rope_type") or scaling.get("type")
        if kind == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(float(scaling["factor"]))
        elif kind == "llama3":  # only for the architectures that take it (refuse_unloadable)
            # llama.cpp takes Llama 3's frequency-dependent scaling as a per-dimension divisor tensor
            writer.add_tensor(
                gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight",
                llama3_rope_factors(scaling, getattr(config, "rope_theta", 10000.0), head_dim),
            )


def context_length(config: Any, spec: ArchSpec) -> int:
    """The checkpoint's context, or its sliding window where llama.cpp's graph attends to the whole
    context instead (Phi-3-mini-4k's 2047 of 4096, Mistral-7B-v0.1's 4096 of 32768, a Qwen2 with
    use_sliding_window): within the window the two compute the same (a query at position p sees
    p - window + 1 onwards in transformers, everything from 0 in llama.cpp)."""
    context = int(config.max_position_embeddings)
    window = getattr(config, "sliding_window", None) if spec.full_attention else None
    # Qwen2/3 keep a window in the config that only the layers typed sliding_attention use
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and "sliding_attention" not in layer_types:
        window = None
    return min(context, int(window)) if window else context


def llama3_rope_factors(scaling: dict[str, Any], theta: float, head_dim: int) -> np.ndarray:
    """Per rotary pair, the divisor of its frequency: 1 for short wavelengths (kept), `factor` for
    wavelengths longer than the original context / low_freq_factor, and a smooth blend between."""
    factor = float(scaling.get("factor", 8.0))
    low, high = float(scaling.get("low_freq_factor", 1.0)), float(scaling.get("high_freq_factor", 4.0))
    original = float(scaling.get("original_max_position_embeddings", 8192))
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * np.pi / inv_freq
    smooth = np.clip((original / wavelen - low) / (high - low), 0.0, 1.0)
    divisor = 1.0 / ((1.0 - smooth) / factor + smooth)  # smooth = 1 -> 1, smooth = 0 -> factor
    return divisor.astype(np.float32)


# llama.cpp keys one tokenizer rule on general.name, whatever the architecture: a model whose name
# holds "phi3" or "phi-3" (ASCII, any case) strips the whitespace after every special token but
# <unk>, <s> and <|endoftext|>, and after </s> (Phi-3's tokenizer, written down as a rule); such a
# model without those four tokens does not load. So the name has to say what the tokenizer does.
PHI3_NAME = re.compile(r"(phi)-?3", re.I | re.A)
PHI3_RULE_KEEPS = ("<unk>", "<s>", "<|endoftext|>")
PHI3_RULE_TOKENS = ("</s>", *PHI3_RULE_KEEPS)


def name_for_llama_cpp(name: str, tok, where: Path) -> str:
    """`name`, with llama.cpp's Phi-3 rule switched on exactly where the tokenizer strips the
    whitespace after the tokens that rule strips after; a tokenizer that strips after others, which
    no GGUF can say, is refused."""
    added = {t.content: t for t in tok.added_tokens_decoder.values()}
    if before := sorted(content for content, t in added.items() if t.lstrip):
        raise InputError(  # llama.cpp strips before a token only by rules on a few model names
            f"{where}: the tokenizer strips the whitespace before {', '.join(before[:6])}; llama.cpp "
            "strips before none: the GGUF would tokenise prompts differently. Set their lstrip to false "
            "in tokenizer.json, or export to ONNX only"
        )
    strips = {content for content, t in added.items() if t.rstrip}
    if not strips:
        return PHI3_NAME.sub(r"\1 3", name)
    vocab = tok.get_vocab()
    rule = ({*added, "</s>"} - set(PHI3_RULE_KEEPS)) & set(vocab)
    missing = [t for t in PHI3_RULE_TOKENS if t not in vocab]
    if strips != rule or missing:
        differ = sorted(strips ^ rule)
        raise InputError(
            f"{where}: the tokenizer strips the whitespace after {', '.join(sorted(strips)[:6])}; llama.cpp "
            "strips after none or, by its Phi-3 rule, after every special token but <unk>, <s> and "
            "<|endoftext|>"
            + (f" (they differ on {', '.join(differ[:6])})" if differ else "")
            + (f", and that rule needs {', '.join(missing)} in the vocabulary" if missing else "")
            + ": the GGUF would tokenise prompts differently. Make the rstrip settings in tokenizer.json "
            "match one of the two, or export to ONNX only"
        )
    return name if PHI3_NAME.search(name) else f"{name} (phi3 tokenizer)"


def _write_tokenizer(writer: gguf.GGUFWriter, model_dir: Path, config: Any, warn=None):
    """The vocabulary and its special tokens; returns the HF tokenizer they came from. `warn` is
    told of the tokens left out, past the embedding rows."""
    from transformers import AutoTokenizer

    vocab = read_vocab(model_dir, config.vocab_size)
    if vocab.left_out and warn is not None:
        names = ", ".join(repr(t) for t in vocab.left_out[:8]) + (", ..." if len(vocab.left_out) > 8 else "")
        warn(
            f"{model_dir}: {len(vocab.left_out)} tokenizer token(s) past the model's {config.vocab_size} "
            f"embedding rows left out of the GGUF ({names}): the model has no row to read or write them"
        )
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    special = gguf.SpecialVocab(model_dir, load_merges=vocab.model == "gpt2", n_vocab=len(vocab.tokens))
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    probe = tok("a", add_special_tokens=True)["input_ids"]
    # what the tokenizer really does, rather than what a config flag claims
    special.add_special_token["bos"] = (
        bool(probe) and probe[0] == tok.bos_token_id and tok.bos_token_id is not None
    )
    # no EOS after a prompt, whatever the tokenizer appends: training, bench and chat tokenise
    # without it, and a file that said so would make llama.cpp end every prompt with one
    special.add_special_token["eos"] = False
    # the template transformers applies: where a directory has two (tokenizer_config.json and
    # chat_template.jinja), SpecialVocab and transformers would pick different ones
    special.chat_template = _named_templates(tok.chat_template)
    _end_of_turn_ids(special, model_dir, tok)
    special.add_to_gguf(writer, quiet=True)  # merges, bos/eos/eot/eom/unk/pad ids, chat template
    if vocab.model == "llama":
        # llama.cpp prepends "▁" to SentencePiece input unless told not to; do what the HF tokenizer does
        prefix = tok.tokenize("a")[:1] in (["▁a"], ["▁"])
        if prefix and vocab.prefix_at_start_only and _chats_open_with_a_special_token(tok):
            # llama.cpp prefixes after every special token or nowhere; transformers here only at the
            # input's start. A chat prompt that opens with a special token has no "▁" anywhere, so
            # nowhere is what matches it (the parity check compares the prompt ids the file makes)
            prefix = False
        writer.add_add_space_prefix(prefix)
    return tok


def _chats_open_with_a_special_token(tok) -> bool:
    from edgetune.templating import apply_chat_template

    if not tok.chat_template:
        return False
    try:
        text = apply_chat_template(tok, [{"role": "user", "content": "hi"}], add_generation_prompt=True)
    except EdgetuneError:  # a template that needs more than one user turn: keep llama.cpp's default
        return False
    return any(text.startswith(t.content) for t in tok.added_tokens_decoder.values() if t.special)


def _named_templates(template):
    """A tokenizer's chat template in the form GGUFWriter takes: one string, or named ones."""
    if isinstance(template, dict):
        return [{"name": name, "template": text} for name, text in template.items()]
    return template or None


def _end_of_turn_ids(special, model_dir: Path, tok) -> None:
    """generation_config's stop ids beyond the EOS (Qwen's <|im_end|> beside <|endoftext|>, Llama
    3's <|eot_id|> and <|eom_id|>) as the file's end-of-turn and end-of-message ids: llama.cpp
    stops at those, and at tokens it knows by name, and nowhere else. The parity check verifies
    that it stops at every one of them."""
    from edgetune.data.render import stop_ids

    ids = special.special_token_ids
    known = {ids.get("eos"), ids.get("eot"), ids.get("eom")}
    # a stop id past the file's tokens (past the embedding rows) is never generated
    extra = [i for i in stop_ids(model_dir, tok) if i not in known and i < special.n_vocab]
    for kind, token in turn_and_message_ends(extra, tok, ids).items():
        ids[kind] = token


def turn_and_message_ends(extra: list[int], tok, known: dict) -> dict[str, int]:
    """Which extra stop id is the end of a turn and which the end of a message. Llama 3.1 stops at
    <|eom_id|> (128008) and <|eot_id|> (128009): the end of message is the token named so, the end
    of turn preferably one the chat template writes; by id order the two would be swapped."""
    template = tok.chat_template
    template = " ".join(template.values()) if isinstance(template, dict) else template or ""
    names = {i: tok.convert_ids_to_tokens(i) or "" for i in extra}
    pool = sorted(extra, key=lambda i: (not names[i] or names[i] not in template, i))
    chosen: dict[str, int] = {}
    message = next((i for i in pool if "eom" in names[i].lower()), None)
    if "eom" not in known and message is not None:
        chosen["eom"] = message
        pool.remove(message)
    for kind in ("eot", "eom"):
        if kind not in known and kind not in chosen and pool:
            chosen[kind] = pool.pop(0)
    return chosen


def convert(
    model_dir: Path,
    out: Path,
    outtype: str = "f16",
    provenance: dict[str, str] | None = None,
    name: str | None = None,
    warn=None,
) -> Path:
    """Write model_dir (an HF model directory) as a GGUF file at `out`, atomically. `name` is the
    file's general.name (default: the directory's name); `warn(message)` hears what was left out."""
    import torch
    from transformers import AutoConfig

    if outtype not in OUTTYPES:
        raise InputError(
            f"GGUF output type {outtype!r} is written by the quantiser, not the converter; "
            f"the converter writes {', '.join(OUTTYPES)}"
        )
    file_type, matrix_type = OUTTYPES[outtype]
    try:
        config = AutoConfig.from_pretrained(str(model_dir))
    except (OSError, ValueError) as exc:
        raise InputError(f"{model_dir}/config.json: cannot read the model config ({exc})") from None
    arch, spec = arch_for(config)
    refuse_unloadable(config, spec, arch)
    refuse_missing_weights(model_dir, config)
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    names = gguf.get_tensor_name_map(spec.gguf_arch, config.num_hidden_layers)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[spec.gguf_arch])
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_file_type(file_type)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        write_hparams(writer, config, spec)
        tok = _write_tokenizer(writer, model_dir, config, warn)
        writer.add_name(
            name_for_llama_cpp(name or model_dir.resolve().name, tok, model_dir / "tokenizer.json")
        )
        writer.add_string("edgetune.version", __version__)
        for key, value in (provenance or {}).items():
            writer.add_string(f"edgetune.{key}", str(value))
        tied = bool(getattr(config, "tie_word_embeddings", False))
        for hf_name, tensor in _iter_tensors(model_dir):
            if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
                continue
            data = tensor.to(torch.float32).numpy()
            # the biases too (Llama's attention_bias): they are added to the rows the rope turns
            if spec.permute_qk and hf_name.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")):
                data = permute_rope(data, n_head)
            elif spec.permute_qk and hf_name.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias")):
                data = permute_rope(data, n_kv)
            if spec.tensor:
                data = spec.tensor(hf_name, data)
            gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if gguf_name is None:
                raise InputError(
                    f"{model_dir}: tensor {hf_name!r} has no GGUF name for {spec.gguf_arch.name}"
                )
            if data.ndim <= 1 or matrix_type == gguf.GGMLQuantizationType.F32:
                writer.add_tensor(
                    gguf_name, data.astype(np.float32)
                )  # norms and biases stay F32, as in llama.cpp
            elif matrix_type == gguf.GGMLQuantizationType.F16:
                writer.add_tensor(gguf_name, data.astype(np.float16))
            else:
                writer.add_tensor(gguf_name, gguf.quants.quantize(data, matrix_type), raw_dtype=matrix_type)
        with writing(out):
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
            fsync_file(tmp)
        os.chmod(tmp, mode_for(out))  # a file the user made private stays so
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(Exception):
            writer.close()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return out
