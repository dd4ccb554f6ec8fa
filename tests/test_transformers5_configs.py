"""Models saved by transformers 5 (config.json's rope_parameters, no rope_theta or rope_scaling) load
with the RoPE they were trained with, where edgetune runs on transformers 4."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import build_tiny_model

from edgetune.errors import ModelError
from edgetune.models import load_causal_lm, resolve_model

IDS = torch.tensor([[(i * 37) % 300 for i in range(40)]])
ROPE_KEYS = ("rope_theta", "rope_scaling", "rope_local_base_freq", "partial_rotary_factor")
LONGROPE = {
    "type": "longrope",
    "short_factor": [1.0, 1.1, 1.2, 1.3, 1.4, 1.5],
    "long_factor": [2.0, 3, 4, 5, 6, 7],
}
LLAMA3 = {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}

# (architecture, the settings as transformers 4 takes them, rope_parameters as transformers 5.25 wrote
# the same settings)
CASES = [
    ("Qwen3ForCausalLM", {"rope_theta": 1e6}, {"rope_theta": 1e6, "rope_type": "default"}),
    (
        "LlamaForCausalLM",
        {"rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", **LLAMA3}},
        {"rope_theta": 500000.0, "rope_type": "llama3", **LLAMA3},
    ),
    (
        "Gemma3ForCausalLM",
        {
            "rope_theta": 1e6,
            "rope_local_base_freq": 500.0,
            "rope_scaling": {"rope_type": "linear", "factor": 8.0},
        },
        {
            "full_attention": {"factor": 8.0, "rope_theta": 1e6, "rope_type": "linear"},
            "sliding_attention": {"rope_theta": 500.0, "rope_type": "default"},
        },
    ),
    (
        "Phi3ForCausalLM",
        {"rope_theta": 20000.0, "partial_rotary_factor": 0.5},
        {"partial_rotary_factor": 0.5, "rope_theta": 20000.0, "rope_type": "default"},
    ),
    (  # Phi-4-mini's kind: IDS are longer than the original context, so the long factors apply
        "Phi3ForCausalLM",
        {"partial_rotary_factor": 0.75, "original_max_position_embeddings": 32, "rope_scaling": LONGROPE},
        {
            "rope_type": "longrope",
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.75,
            "original_max_position_embeddings": 32,
            "short_factor": LONGROPE["short_factor"],
            "long_factor": LONGROPE["long_factor"],
        },
    ),
]


def _as_saved_by_transformers5(model_dir, out, rope_parameters):
    shutil.copytree(model_dir, out)
    config = json.loads((out / "config.json").read_text())
    for key in ROPE_KEYS:
        config.pop(key, None)
    config.update(rope_parameters=rope_parameters, transformers_version="5.25.0")
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def _logits(model_dir):
    with torch.no_grad():
        return load_causal_lm(model_dir).eval()(IDS).logits


@pytest.mark.parametrize(
    "arch, settings, rope_parameters", CASES, ids=[f"{c[0]}-{c[2].get('rope_type')}" for c in CASES]
)
def test_a_model_saved_by_transformers5_loads_with_its_own_rope(
    tmp_path, tiny_tokenizer, arch, settings, rope_parameters
):
    """Qwen3's rope_theta 1e6, Llama 3's scaling, Gemma 3's two bases, Phi's partial rotary: read
    from rope_parameters by transformers 4, each fell back to its default, and the model tuned,
    merged, exported and passed parity as another model."""
    reference = build_tiny_model(
        tmp_path / "v4", tiny_tokenizer, arch, max_position_embeddings=256, **settings
    )
    saved = _as_saved_by_transformers5(reference, tmp_path / "v5" / arch, rope_parameters)
    written = (saved / "config.json").read_bytes()
    want = _logits(reference)
    assert (_logits(saved) - want).abs().max() > 1e-3  # what transformers 4 makes of the file alone
    path = resolve_model(str(saved)).path
    assert path != saved and path.name == saved.name
    assert torch.allclose(_logits(path), want, atol=1e-6)
    assert (saved / "config.json").read_bytes() == written  # the user's folder is not written
    assert resolve_model(str(saved)).path == path  # one view, made once


def test_a_gguf_of_a_model_saved_by_transformers5_carries_its_rope_base(tmp_path, tiny_tokenizer):
    """`edgetune export MODEL` reads the model's settings the same way: the GGUF's rope base was
    10000 where the model's is 1e6 (and parity, against the same misread model, agreed)."""
    from click.testing import CliRunner
    from gguf import GGUFReader

    from edgetune.cli import main

    reference = build_tiny_model(tmp_path / "v4", tiny_tokenizer, "Qwen3ForCausalLM", rope_theta=1e6)
    saved = _as_saved_by_transformers5(reference, tmp_path / "v5" / "qwen3", CASES[0][2])
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["export", str(saved), "--to", "gguf", "--quant", "f32", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    (gguf,) = (out / "gguf").glob("*.gguf")
    field = GGUFReader(gguf).fields["qwen3.rope.freq_base"]
    assert float(field.parts[field.data[0]][0]) == 1e6


def test_rope_types_transformers4_cannot_be_told_are_refused(tmp_path, tiny_tokenizer):
    """longrope outside Phi-3, whose transformers 4 form edgetune knows: refused, not guessed."""
    reference = build_tiny_model(tmp_path / "v4", tiny_tokenizer, "Qwen3ForCausalLM")
    saved = _as_saved_by_transformers5(
        reference,
        tmp_path / "v5" / "qwen3",
        {"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0], "long_factor": [1.0]},
    )
    with pytest.raises(ModelError, match="rope_parameters of type 'longrope'.*other rotary embeddings"):
        resolve_model(str(saved))


def test_under_transformers5_the_folder_is_read_as_it_is(tmp_path, tiny_tokenizer, monkeypatch):
    import edgetune.config_from_transformers5 as module

    reference = build_tiny_model(tmp_path / "v4", tiny_tokenizer, "Qwen3ForCausalLM", rope_theta=1e6)
    saved = _as_saved_by_transformers5(reference, tmp_path / "v5" / "qwen3", CASES[0][2])
    monkeypatch.setattr(module.metadata, "version", lambda name: "5.25.0")
    assert resolve_model(str(saved)).path == saved.resolve()
    assert resolve_model(str(reference)).path == reference.resolve()


def test_a_tokenizer_saved_by_transformers5_loads_as_it_was(tmp_path, tiny_tokenizer):
    """transformers 5 writes tokenizer_class TokenizersBackend and a list of extra special tokens;
    transformers 4 refused the class ("does not exist"), then failed on the list."""
    from transformers import AutoTokenizer

    reference = build_tiny_model(tmp_path / "v4", tiny_tokenizer, "Qwen3ForCausalLM", rope_theta=1e6)
    saved = _as_saved_by_transformers5(reference, tmp_path / "v5" / "qwen3", CASES[0][2])
    config = json.loads((saved / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="TokenizersBackend", extra_special_tokens=["<|endoftext|>"])
    config.pop("additional_special_tokens", None)
    (saved / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="TokenizersBackend does not exist"):
        AutoTokenizer.from_pretrained(saved)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(str(saved)).path)
    text = "Hello world<|im_end|> <|endoftext|>"
    assert tokenizer(text).input_ids == tiny_tokenizer(text).input_ids
    assert "<|endoftext|>" in tokenizer.additional_special_tokens
    # chat on the folder itself reads its tokenizer through the view too
    from click.testing import CliRunner

    from edgetune.cli import main

    result = CliRunner().invoke(main, ["chat", str(saved), "--prompt", "hi", "--max-new-tokens", "2"])
    assert result.exit_code == 0, result.output


def test_a_tune_on_such_a_model_names_and_hashes_the_users_folder(tmp_path, tiny_tokenizer):
    """The tune hashed edgetune's view (its rewritten config.json), `run` the user's folder: the two
    never matched, so `run` retrained a finished tune; and the adapter named the cache as its base."""
    from test_tune import make_recipe

    from edgetune.rundir import sha256_tree
    from edgetune.tune.run import tune

    reference = build_tiny_model(tmp_path / "v4", tiny_tokenizer, "Qwen3ForCausalLM", rope_theta=1e6)
    saved = _as_saved_by_transformers5(reference, tmp_path / "v5" / "qwen3", CASES[0][2])
    recipe = make_recipe(tmp_path, saved, max_steps=1, eval_steps=1, save_steps=1)
    run = tune(str(recipe)).run_dir
    base = json.loads((run / "manifest.json").read_text())["base_model"]
    assert base["path"] == str(saved.resolve()) and base["sha256"] == sha256_tree(saved)
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(saved.resolve())


def test_a_rope_scaling_set_beside_rope_parameters_is_the_one_read(tmp_path):
    """transformers 5 takes a set rope_scaling (YaRN added by hand, as Qwen's docs say) over
    rope_parameters; the view had spelled rope_parameters over it and dropped the scaling."""
    from edgetune.config_from_transformers5 import as_transformers4

    config = {
        "model_type": "qwen3",
        "rope_theta": 1e6,
        "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768},
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
    }
    assert as_transformers4(config, "config.json") == config


def test_model_types_not_checked_are_refused_and_other_parts_left_alone():
    """GPT-NeoX reads its own keys (rotary_emb_base), so a view would change nothing: refused. A
    vision tower's rope kind is not the text model's business."""
    from edgetune.config_from_transformers5 import as_transformers4

    neox = {"model_type": "gpt_neox", "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}
    with pytest.raises(ModelError, match="rope_parameters of a 'gpt_neox' model"):
        as_transformers4(neox, "config.json")
    text = {"model_type": "qwen3", "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}
    vision = {"model_type": "some_vision", "rope_parameters": {"rope_type": "axial"}}
    spelled = as_transformers4({"text_config": text, "vision_config": vision}, "config.json")
    assert spelled["text_config"]["rope_theta"] == 1e6 and spelled["vision_config"] == vision


def test_a_view_made_halfway_leaves_nothing_that_stops_the_next(tmp_path, tiny_tokenizer, monkeypatch):
    """A view interrupted halfway left its staging folder, named by the process id, and the next
    process with that id (PID 1 in every container) failed on it for good."""
    from pathlib import Path

    from edgetune.models import cache_dir

    reference = build_tiny_model(tmp_path / "v4", tiny_tokenizer, "Qwen3ForCausalLM", rope_theta=1e6)
    saved = _as_saved_by_transformers5(reference, tmp_path / "v5" / "qwen3", CASES[0][2])
    real = Path.symlink_to
    calls = []

    def fail_on_the_third(self, target):
        calls.append(target)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(self, target)

    views = cache_dir() / "transformers4-configs"
    before = sorted(views.iterdir()) if views.is_dir() else []  # other tests' views
    monkeypatch.setattr(Path, "symlink_to", fail_on_the_third)
    with pytest.raises(OSError, match="No space left"):
        resolve_model(str(saved))
    monkeypatch.setattr(Path, "symlink_to", real)
    assert sorted(views.iterdir()) == before  # nothing half made, nothing left behind
    path = resolve_model(str(saved)).path
    assert torch.allclose(_logits(path), _logits(reference), atol=1e-6)
