"""Hardening: untrusted model files never run code; the same seed gives the same run."""

import json
import shutil

import pytest

from edgetune.errors import ModelError
from edgetune.models import resolve_model


def pickled_model_dir(tmp_path, tiny_model_dir):
    import torch
    from safetensors.torch import load_file

    model = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, model)
    state = load_file(model / "model.safetensors")
    (model / "model.safetensors").unlink()
    torch.save(state, model / "pytorch_model.bin")
    return model


def test_pickle_weights_are_refused_unless_allowed(tmp_path, tiny_model_dir):
    from click.testing import CliRunner
    from conftest import chat_row, write_jsonl

    from edgetune.cli import main

    model = pickled_model_dir(tmp_path, tiny_model_dir)
    with pytest.raises(ModelError, match="pytorch_model.bin.*--allow-pickle"):
        resolve_model(str(model))
    assert resolve_model(str(model), allow_pickle=True).path == model.resolve()
    write_jsonl(tmp_path / "d.jsonl", [chat_row(f"q{i}", f"a{i}") for i in range(20)])
    result = CliRunner().invoke(
        main, ["tune", "--set", f"model.base={model}", "--set", f"data.train={tmp_path / 'd.jsonl'}"]
    )
    assert result.exit_code == 2 and "can run code when loaded" in result.output
    exported = CliRunner().invoke(main, ["export", str(model)])
    assert exported.exit_code == 2 and "pickle" in exported.output


def test_remote_code_in_a_model_dir_never_runs(tmp_path, tiny_model_dir):
    from edgetune.config import TrainConfig
    from edgetune.tune.model import choose_setup, load_for_training

    model = tmp_path / "remote"
    shutil.copytree(tiny_model_dir, model)
    marker = tmp_path / "pwned"
    (model / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {
        "AutoModelForCausalLM": "modeling_evil.Evil",
        "AutoConfig": "modeling_evil.EvilConfig",
    }
    (model / "config.json").write_text(json.dumps(config))
    train = TrainConfig()
    try:
        load_for_training(resolve_model(str(model)), choose_setup("lora", "fp32"), train.lora)
    except ModelError:
        pass  # refusing is fine too; running the file is not
    assert not marker.exists()


def adapter_hash(run):
    from edgetune.rundir import sha256_file

    return sha256_file(run / "adapter" / "adapter_model.safetensors")


def test_same_seed_same_run_other_seed_other_run(tmp_path, tiny_model_dir):
    from test_tune import make_recipe, train_losses

    from edgetune.tune.run import tune

    runs = []
    for i, seed in enumerate([7, 7, 8]):
        (tmp_path / str(i)).mkdir()
        recipe = make_recipe(
            tmp_path / str(i), tiny_model_dir, max_steps=4, eval_steps=2, save_steps=2, seed=seed
        )
        runs.append(tune(str(recipe)).run_dir)
    assert train_losses(runs[0]) == train_losses(runs[1])
    assert adapter_hash(runs[0]) == adapter_hash(runs[1])
    assert train_losses(runs[0]) != train_losses(runs[2])
    assert adapter_hash(runs[0]) != adapter_hash(runs[2])
