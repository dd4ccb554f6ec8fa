import pytest

from edgetune.errors import ModelError
from edgetune.models import load_tokenizer, resolve_model


def test_local_directory_resolves(tiny_model_dir):
    resolved = resolve_model(str(tiny_model_dir))
    assert resolved.kind == "local" and resolved.path == tiny_model_dir.resolve()
    tok = load_tokenizer(resolved)
    assert tok.eos_token == "<|im_end|>"


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
