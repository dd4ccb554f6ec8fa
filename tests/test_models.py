import pytest

from edgetune.errors import ModelError
from edgetune.models import load_tokenizer, resolve_model


def test_local_directory_resolves(tiny_model_dir):
    resolved = resolve_model(str(tiny_model_dir))
    assert resolved.kind == "local" and resolved.path == tiny_model_dir.resolve()
    tok = load_tokenizer(resolved)
    assert tok.eos_token == "<|im_end|>"


def test_a_token_added_without_resizing_the_model_is_refused(tmp_path, tiny_model_dir):
    """`add_special_tokens({"pad_token": "[PAD]"})` without resize_token_embeddings: tune and export
    failed inside torch with "index out of range in self". A token past the rows that nothing
    uses (Gemma 3's image token beside a text model) is no problem until data holds it."""
    import json
    import shutil

    from edgetune.data.render import Encoded
    from edgetune.models import ids_past_the_embedding

    model = tmp_path / "added"
    shutil.copytree(tiny_model_dir, model)
    tok = load_tokenizer(resolve_model(str(model)))
    rows = len(tok)
    tok.add_special_tokens({"pad_token": "[PAD]", "additional_special_tokens": ["<image>"]})
    tok.save_pretrained(str(model))
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "vocab_size": rows}))
    with pytest.raises(
        ModelError, match=rf"the tokenizer's '\[PAD\]' \({rows}\) is past the model's {rows} embedding rows"
    ):
        load_tokenizer(resolve_model(str(model)))
    tok.pad_token = tok.eos_token
    tok.save_pretrained(str(model))
    loaded = load_tokenizer(resolve_model(str(model)))  # <image> is past the rows, and unused
    image = loaded.convert_tokens_to_ids("<image>")
    assert image >= rows
    fine = Encoded([1, 2, 3], [1, 2, 3], "d.jsonl:1")
    held = Encoded([1, image, 3], [1, 2, 3], "d.jsonl:7")
    assert ids_past_the_embedding([fine], rows, loaded) is None
    assert ids_past_the_embedding([fine, held], rows, loaded).startswith(
        f"d.jsonl:7: token '<image>' (id {image})"
    )


def test_directory_without_config_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))


def test_unknown_name_lists_aliases():
    with pytest.raises(ModelError, match="smollm2-135m-instruct"):
        resolve_model("not a model")


def test_hub_id_takes_the_hub_path_and_fails_cleanly_offline():
    # HF_HUB_OFFLINE=1 is set for every test: the real download path runs and reports one clear line
    with pytest.raises(ModelError, match="cannot download 'edgetune-test/does-not-exist'"):
        resolve_model("edgetune-test/does-not-exist")


def test_a_base_stored_quantised_is_refused_by_tune_and_export(tmp_path, tiny_model_dir):
    """A "-bnb-4bit" upload: tune trained on its 4-bit weights as "lora (fp32)", merge folded the
    update into them (KL to the adapter 9.5e-3 against 1e-8), and export failed on 'absmax'."""
    import json
    import shutil

    from click.testing import CliRunner

    from edgetune.cli import main

    base = shutil.copytree(tiny_model_dir, tmp_path / "base-bnb-4bit")
    config = json.loads((base / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (base / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ModelError, match=r"base-bnb-4bit: its weights are stored quantised \(bitsandbytes 4-bit"
    ):
        resolve_model(str(base))
    exported = CliRunner().invoke(main, ["export", str(base), "--to", "gguf", "--quant", "f16"])
    assert exported.exit_code == 2 and "stored quantised" in exported.output, exported.output


def test_a_plain_model_whose_template_refuses_a_system_turn_exports(tmp_path, tiny_model_dir):
    """Mistral-Instruct's [INST] template raises on a system turn: a plain model's export checks it
    on the demo's chats without theirs (it failed on an error naming edgetune's own dataset)."""
    import json
    import shutil

    from click.testing import CliRunner

    from edgetune.cli import main

    model = shutil.copytree(tiny_model_dir, tmp_path / "inst")
    refusing = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}"
        "{% elif m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
        "{% else %}{{ m['content'] }}<|im_end|>{% endif %}{% endfor %}"
    )
    settings = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**settings, "chat_template": refusing}))
    (model / "chat_template.jinja").unlink(missing_ok=True)
    out = tmp_path / "out"
    args = ["export", str(model), "--to", "gguf", "--quant", "f32", "--out", str(out)]
    exported = CliRunner().invoke(main, args)
    assert exported.exit_code == 0, exported.output
    assert (out / "gguf" / "model-f32.gguf").is_file()


def test_tune_refuses_data_holding_a_token_the_model_has_no_row_for(tmp_path, tiny_model_dir):
    """A token in the tokenizer only (not resized into the model), written in a training row: tune
    names the row before any training, where torch failed with 'index out of range in self'."""
    import json
    import shutil

    from click.testing import CliRunner
    from conftest import chat_row, write_jsonl

    from edgetune.cli import main

    model = shutil.copytree(tiny_model_dir, tmp_path / "added")
    tok = load_tokenizer(resolve_model(str(model)))
    rows = len(tok)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tok.save_pretrained(str(model))
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "vocab_size": rows}))
    data = [chat_row(f"q{i}", f"a{i}") for i in range(20)]
    data[3] = chat_row("what is <image>?", "a picture")
    write_jsonl(tmp_path / "d.jsonl", data)
    sets = ["--set", f"model.base={model}", "--set", f"data.train={tmp_path / 'd.jsonl'}"]
    result = CliRunner().invoke(
        main, ["tune", *sets, "--set", "data.valid_fraction=0", "--run-dir", str(tmp_path / "r")]
    )
    assert result.exit_code == 2, result.output
    assert (
        "d.jsonl:4: token '<image>'" in result.output
        and f"past the model's {rows} embedding rows" in result.output
    )


def test_the_model_cache_follows_xdg_cache_home_where_edgetune_cache_is_not_set(tmp_path, monkeypatch):
    """XDG_CACHE_HOME was ignored: with a read-only HOME and a writable XDG cache, every command
    failed on ~/.cache: permission denied."""
    from edgetune.models import cache_dir

    monkeypatch.delenv("EDGETUNE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "edgetune"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # not absolute: the spec says ignore it
    assert cache_dir() == tmp_path / "home" / ".cache" / "edgetune"
    monkeypatch.setenv("EDGETUNE_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
