"""An ONNX folder's side files against the merged model it was exported from.

optimum's `ORTModelForCausalLM.from_pretrained(folder).generate(...)` reads where to stop and how
to sample from the folder's generation_config.json (config.json's ids where it has none), and a
plain `tokenizer(text)` call adds whatever special tokens the folder's tokenizer.json says. The
parity loop decodes by argmax with the union of every stop id it finds, so it sees none of these:
an EOS id rewritten to another token, a temperature, or a BOS the model never saw all passed it.
The export copies these files from the merged model (optimum saves the config and generation
config it loaded from it, and the tokenizer), so any difference in what they say is a change.
"""

from __future__ import annotations

import json
from pathlib import Path

CONFIG_IDS = ("eos_token_id", "bos_token_id", "pad_token_id")
SPECIAL_TOKENS = ("eos_token", "bos_token", "pad_token", "unk_token")
# what saving writes about the writer, not about generation
BOOKKEEPING = {"transformers_version", "_from_model_config", "_commit_hash", "_original_object_hash"}


def generation_settings(folder: Path) -> dict:
    """Every generation setting transformers (and optimum's ORTModelForCausalLM) takes from the
    folder, defaults filled in: its generation_config.json, else what config.json gives."""
    from transformers import AutoConfig, GenerationConfig
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its notes on settings that do not go together: ours say more
    try:
        try:
            settings = GenerationConfig.from_pretrained(str(folder), local_files_only=True)
        except OSError:  # none written: from_pretrained takes the model config's
            settings = GenerationConfig.from_model_config(AutoConfig.from_pretrained(str(folder)))
    finally:
        hf_logging.set_verbosity(verbosity)
    return {k: v for k, v in settings.to_dict().items() if k not in BOOKKEEPING}


def _config_ids(folder: Path) -> dict:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: config.get(k) for k in CONFIG_IDS} if isinstance(config, dict) else {}


def setting_differences(model_dir: Path, folder: Path) -> list[str]:
    """One line per file where the folder's generation settings, or config.json's token ids,
    differ from the merged model's: `FILE: FIELD X where the merged model's is Y, ...`."""
    said = []
    shipped, merged = generation_settings(folder), generation_settings(model_dir)
    fields = [
        f"{key} {shipped.get(key)!r} where the merged model's is {merged.get(key)!r}"
        for key in sorted(shipped.keys() | merged.keys())
        if shipped.get(key) != merged.get(key)
    ]
    if fields:
        said.append(
            f"generation_config.json: {', '.join(fields)} (optimum's generate would stop or sample otherwise)"
        )
    shipped_ids, merged_ids = _config_ids(folder), _config_ids(model_dir)
    fields = [
        f"{key} {shipped_ids.get(key)!r} where the merged model's is {merged_ids.get(key)!r}"
        for key in CONFIG_IDS
        if shipped_ids.get(key) != merged_ids.get(key)
    ]
    if fields:
        said.append(f"config.json: {', '.join(fields)}")
    return said


def plain_call_difference(shipped_tokenizer, model_tokenizer, texts: list[str]) -> str | None:
    """How the folder's tokenizer, called as a user calls it (`tokenizer(text)`, special tokens
    added), first parts from the merged model's on `texts`; None where they agree. (The parity
    loop adds special tokens itself, as the renderer does, so a post-processor that adds a BOS
    the model never saw passed it.)"""
    from edgetune.export.tokenizer_probe import ids_difference

    for text in texts:
        shipped = shipped_tokenizer(text)["input_ids"]
        model = model_tokenizer(text)["input_ids"]
        if shipped != model:
            difference = ids_difference(shipped, model, shipped_tokenizer.decode)
            return (
                f"the folder's tokenizer called plainly (tokenizer(text), which adds special tokens) "
                f"gives other ids than the merged model's: {difference}"
            )
    return None


def side_file_problems(model_dir: Path, folder: Path, model_tokenizer, texts: list[str]) -> list[str]:
    """Everything the folder tells a loader that the merged model does not (see the module)."""
    from edgetune.models import ResolvedModel, load_tokenizer

    said = setting_differences(model_dir, folder)
    shipped_tokenizer = load_tokenizer(ResolvedModel(str(folder), folder, "local"))
    tokens = [  # what front-ends that ask the tokenizer where to stop, or what to pad with, read
        f"{name} {getattr(shipped_tokenizer, name)!r} where the merged model's is {getattr(model_tokenizer, name)!r}"
        for name in SPECIAL_TOKENS
        if getattr(shipped_tokenizer, name) != getattr(model_tokenizer, name)
    ]
    if tokens:
        said.append(f"the folder's tokenizer: {', '.join(tokens)}")
    if difference := plain_call_difference(shipped_tokenizer, model_tokenizer, texts):
        said.append(difference)
    return said
