"""Fixtures: an isolated user environment, and tiny random models built here (no network)."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# the shape of every tiny random model in the tests: 2 layers, GQA (4 query heads, 2 KV heads)
TINY_SHAPE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)
CORPUS = [
    "The router in the lobby lost its uplink again, error code E1042.",
    "battery health 40% below threshold on inverter pv-inv-roof-02",
    '{"device": "router", "component": "network", "severity": "error", "code": null, "action": "check_network"}',
    "What is the capital of France? Paris is the capital of France.",
    "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
]


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory):
    """One private model cache for the whole session (the built-in model converts once per session;
    EDGETUNE_TEST_CACHE reuses a cache across sessions), set before any other fixture runs."""
    given = os.environ.get("EDGETUNE_TEST_CACHE")
    cache = Path(given) if given else tmp_path_factory.mktemp("edgetune-cache")
    saved = {k: os.environ.get(k) for k in ("EDGETUNE_CACHE", "HF_HUB_OFFLINE")}
    os.environ["EDGETUNE_CACHE"] = str(cache)
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield cache
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch, session_cache):
    """Every test runs in its own empty directory (so runs/ lands there) with the private cache."""
    monkeypatch.setenv("EDGETUNE_CACHE", str(session_cache))
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def build_tokenizer(
    chat_template: str | None = CHATML,
    add_bos: bool = False,
    vocab_size: int = 400,
    split_regex: str | None = None,
    corpus: list[str] = CORPUS,
    specials: tuple = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>"),
    eos_token: str = "<|im_end|>",
):
    """A byte-level BPE tokenizer trained on `corpus` with GPT-2's pre-tokenizer; with `split_regex`,
    it then splits by that regex before byte-level (the Llama 3, Qwen2 and GPT-4o way), so its
    merges cross the regex's boundaries and a wrong split shows in the ids."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(corpus * 20, trainer)
    if split_regex:
        tk.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split_regex), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    if add_bos:
        tk.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tk.token_to_id("<s>"))]
        )
    else:
        tk.post_processor = processors.ByteLevel(trim_offsets=False)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        eos_token=eos_token,
        pad_token=eos_token,
        unk_token="<|endoftext|>",
        bos_token="<s>" if add_bos else None,
    )
    tok.chat_template = chat_template
    return tok


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """ChatML tokenizer, pad == eos, no BOS: the SmolLM2 situation in miniature."""
    return build_tokenizer()


@pytest.fixture(scope="session")
def base_tokenizer():
    """A base-model tokenizer: adds BOS by itself and has no chat template."""
    return build_tokenizer(chat_template=None, add_bos=True)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A 2-layer random Llama with the tiny tokenizer, saved as an HF directory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tiny_tokenizer),
        **TINY_SHAPE,
        tie_word_embeddings=True,
        eos_token_id=tiny_tokenizer.eos_token_id,
        pad_token_id=tiny_tokenizer.pad_token_id,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out, safe_serialization=True)
    tiny_tokenizer.save_pretrained(out)
    return out


# Gemma 3's own parts, small enough to matter in a short text: a 4-token sliding window on the first
# layer (TEXTS are longer), its rope base far from the global one, and the query scale llama.cpp uses
GEMMA3 = dict(
    sliding_window=4,
    layer_types=["sliding_attention", "full_attention"],
    rope_local_base_freq=500.0,
    query_pre_attn_scalar=16,
)


def build_tiny_model(tmp_path: Path, tokenizer, arch: str, **overrides) -> Path:
    """A 2-layer random model of `arch` in tmp_path/arch, with random biases and norm weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    kinds = {
        "MistralForCausalLM": "mistral",
        "Qwen2ForCausalLM": "qwen2",
        "Qwen3ForCausalLM": "qwen3",
        "LlamaForCausalLM": "llama",
        "Gemma3ForCausalLM": "gemma3_text",
        "Phi3ForCausalLM": "phi3",
    }
    settings = dict(
        vocab_size=len(tokenizer),
        **TINY_SHAPE,
        head_dim=16,
        tie_word_embeddings=arch != "MistralForCausalLM",
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        architectures=[arch],
        rope_theta=10000.0,
        **(GEMMA3 if arch == "Gemma3ForCausalLM" else {}),
    )
    config = AutoConfig.for_model(kinds[arch], **{**settings, **overrides})
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # random biases and norm weights, so a wrong mapping shows in the logits
        for name, p in model.named_parameters():
            if name.endswith(("bias", "norm.weight")):
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if name.endswith("norm.weight") else 0.0))
    out = tmp_path / arch
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_gemma3_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A 2-layer random Gemma 3 (one sliding-window layer, one global) with the tiny tokenizer."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-gemma3"), tiny_tokenizer, "Gemma3ForCausalLM")


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def chat_row(user: str, answer: str, system: str | None = None) -> dict:
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user},
        {"role": "assistant", "content": answer},
    ]
    return {"messages": msgs}


@pytest.fixture
def chat_rows() -> list[dict]:
    return [chat_row(f"log line number {i}: link down on eth{i % 4}", f'{{"n": {i}}}') for i in range(50)]


@contextlib.contextmanager
def umask(mask: int):
    """The process's umask set to `mask` for a while (edgetune reads it once per process, so its
    reading is forgotten on the way in and out)."""
    from edgetune.rundir import _umask

    old = os.umask(mask)
    _umask.cache_clear()
    try:
        yield
    finally:
        os.umask(old)
        _umask.cache_clear()


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def caller_state() -> dict:
    """What a caller of tune, merge or bench set for its own process, in comparable form."""
    import random
    import warnings

    import numpy as np
    import torch
    import transformers

    return {
        "environ": dict(os.environ),
        "torch_threads": torch.get_num_threads(),
        "verbosity": transformers.logging.get_verbosity(),
        "warnings_filters": list(warnings.filters),
        "python_rng": random.getstate(),
        "numpy_rng": np.random.get_state()[1].tolist(),
        "torch_rng": torch.random.get_rng_state().tolist(),
    }


@pytest.fixture
def callers_settings():
    """A caller's own choices, each other than a stage's: 2 threads (the recipes here train on 1),
    transformers' warnings shown, every RNG seeded; torch's thread count is put back afterwards."""
    import random

    import numpy as np
    import torch
    import transformers

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    transformers.logging.set_verbosity_warning()
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    yield
    torch.set_num_threads(threads)


def model_with_template(tmp_path: Path, tiny_model_dir: Path, template: str) -> Path:
    """A copy of the tiny model whose one chat template is `template` (in tokenizer_config.json,
    no chat_template.jinja beside it)."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["chat_template"] = template
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    (model / "chat_template.jinja").unlink(missing_ok=True)
    return model
