"""Adapters made elsewhere, put in a run's adapter/ folder: what merge says of those it cannot use."""

import re
import shutil

from click.testing import CliRunner
from test_tune import make_recipe

from edgetune.cli import main
from edgetune.tune.run import tune


def _save_adapter(model_dir, config, adapter):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    shutil.rmtree(adapter, ignore_errors=True)
    get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), config).save_pretrained(str(adapter))


def test_every_type_merge_allows_is_one_peft_knows():
    from peft import PeftType

    from edgetune.validate import MERGEABLE_PEFT_TYPES

    assert set(MERGEABLE_PEFT_TYPES) <= {t.value for t in PeftType}


def test_an_adapter_peft_cannot_fold_into_the_weights_is_refused_naming_its_type(tmp_path, tiny_model_dir):
    """Prefix-, prompt- and p-tuning adapters (virtual tokens at run time, nothing in the weights)
    were loaded onto the base and merged: exit 1, "'LlamaForCausalLM' object has no attribute
    'merge_and_unload'" (or an IndexError on a mask shape), and an activated LoRA peft's own
    NotImplementedError. A LoHa adapter, which peft folds into the weights, still merges."""
    from peft import LoHaConfig, LoraConfig, PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig

    run = tune(str(make_recipe(tmp_path, tiny_model_dir, max_steps=2, eval_steps=2, save_steps=2))).run_dir
    refused = {
        "PREFIX_TUNING": PrefixTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM"),
        "PROMPT_TUNING": PromptTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM"),
        "P_TUNING": PromptEncoderConfig(num_virtual_tokens=4, encoder_hidden_size=16, task_type="CAUSAL_LM"),
        "alora_invocation_tokens": LoraConfig(
            r=4, target_modules=["q_proj"], alora_invocation_tokens=[5, 6], task_type="CAUSAL_LM"
        ),
    }
    for kind, config in refused.items():
        _save_adapter(tiny_model_dir, config, run / "adapter")
        result = CliRunner().invoke(main, ["merge", str(run)])
        assert result.exit_code == 2, (kind, result.output)
        line = " ".join(result.output.split())
        assert f"{run / 'adapter' / 'adapter_config.json'}" in line.replace(" ", ""), line
        assert kind in line and "cannot fold into the model's weights" in line, line
        assert "edgetune merges only those it can" in line, line
        assert not (run / "merged").exists()
    _save_adapter(tiny_model_dir, LoHaConfig(r=4, target_modules=["q_proj", "v_proj"]), run / "adapter")
    result = CliRunner().invoke(main, ["merge", str(run)])
    assert result.exit_code == 0, result.output
    assert (run / "merged" / "model.safetensors").is_file()


def test_adapter_weights_without_their_config_name_the_missing_file_not_an_unfinished_tune(
    tmp_path, tiny_model_dir
):
    """adapter/ holding adapter_model.safetensors but no adapter_config.json: merge (and export,
    which merges first) said "no adapter yet (its tune did not finish); continue it with `edgetune
    tune --resume`", and that resume said the run had finished: a loop that never named the file."""
    from peft import LoraConfig

    run = tune(str(make_recipe(tmp_path, tiny_model_dir, max_steps=2, eval_steps=2, save_steps=2))).run_dir
    config = run / "adapter" / "adapter_config.json"
    config.unlink()
    spare = run / "checkpoints" / "checkpoint-2" / "adapter_config.json"
    for command in ("merge", "export"):
        result = CliRunner().invoke(main, [command, str(run)])
        assert result.exit_code == 2, (command, result.output)
        line = " ".join(result.output.split())
        assert "adapter_config.json: missing beside the adapter's weights (adapter_model.safetensors;" in line
        assert f"copy it back from the tune's checkpoint of the same tensors, {spare}" in line, line
        assert "resume" not in line and "no adapter yet" not in line
        assert not (run / "merged").exists()
    shutil.copy(spare, config)  # as told
    assert CliRunner().invoke(main, ["merge", str(run)]).exit_code == 0
    # weights from elsewhere (another rank): the checkpoint's config is not theirs to take
    shutil.rmtree(run / "merged")
    _save_adapter(tiny_model_dir, LoraConfig(r=2, target_modules=["q_proj"]), run / "adapter")
    (run / "adapter" / "adapter_config.json").unlink()
    result = CliRunner().invoke(main, ["merge", str(run)])
    line = " ".join(result.output.split())
    assert result.exit_code == 2 and "missing beside the adapter's weights" in line, line
    assert "put back the adapter_config.json saved with these weights" in line and "checkpoint" not in line


def test_an_adapter_trained_with_tokens_added_names_both_vocabularies_not_another_model(
    tmp_path, tiny_tokenizer
):
    """An adapter trained after resizing the embeddings (two tokens added, embed_tokens and lm_head
    in modules_to_save) was refused as "trained on another model than model.base ... (size mismatch
    for ...embed_tokens... [N, 64] vs [M, 64])", though the base was the right one. Resized to the
    adapter's rows and saved with its tokenizer, the base merges it into the adapter model."""
    import torch
    from conftest import build_tiny_model
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = build_tiny_model(tmp_path, tiny_tokenizer, "LlamaForCausalLM", tie_word_embeddings=False)
    run = tune(str(make_recipe(tmp_path, base, max_steps=2, eval_steps=2, save_steps=2))).run_dir
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<tool>", "</tool>"]})
    model = AutoModelForCausalLM.from_pretrained(base)
    rows, added = model.get_input_embeddings().weight.shape[0], len(tokenizer)
    model.resize_token_embeddings(added)
    config = LoraConfig(
        r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["embed_tokens", "lm_head"],
        init_lora_weights=False, task_type="CAUSAL_LM",
    )  # fmt: skip
    adapter = run / "adapter"
    shutil.rmtree(adapter)
    torch.manual_seed(2)
    tuned = get_peft_model(model, config)
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if "modules_to_save" in name:
                p.add_(torch.randn_like(p) * 0.2)
    tuned.save_pretrained(str(adapter))
    tokenizer.save_pretrained(str(adapter))
    result = CliRunner().invoke(main, ["merge", str(run)])
    assert result.exit_code == 2, result.output
    line = " ".join(result.output.split())
    assert f"was trained with a vocabulary of {added} tokens, model.base {base} has {rows}" in line, line
    assert "tokens added in training?" in line and f"resized to {added} rows" in line, line
    assert "another model" not in line and not (run / "merged").exists()
    # as the message says: the base resized, with the adapter's tokenizer, as model.base of a new run
    resized = tmp_path / "resized"
    model = AutoModelForCausalLM.from_pretrained(base)
    model.resize_token_embeddings(added)
    model.save_pretrained(resized)
    AutoTokenizer.from_pretrained(adapter).save_pretrained(resized)
    fresh = run.parent / "fresh"
    fresh.mkdir()
    recipe = re.sub(r"(?m)^  base: .*$", f"  base: {resized}", (run / "recipe.yaml").read_text(), count=1)
    (fresh / "recipe.yaml").write_text(recipe)
    shutil.copytree(adapter, fresh / "adapter")
    result = CliRunner().invoke(main, ["merge", str(fresh)])
    assert result.exit_code == 0, result.output
    assert len(AutoTokenizer.from_pretrained(fresh / "merged")) == added
    ids = torch.tensor([tokenizer("<tool> link down on eth1 </tool>")["input_ids"]])
    assert ids.max() >= rows  # the added tokens are in the prompt
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(resized), str(adapter))
    merged = AutoModelForCausalLM.from_pretrained(fresh / "merged")
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, reference(ids).logits, atol=1e-4, rtol=1e-4)


def test_an_adapter_whose_config_names_another_base_is_warned_about(tmp_path, tiny_model_dir):
    """An adapter trained on another model of the same shapes merged silently, its "KL to adapter"
    (measured on the same wrong base) near 0."""
    import json

    run = tune(str(make_recipe(tmp_path, tiny_model_dir, max_steps=2, eval_steps=2, save_steps=2))).run_dir
    merged = CliRunner().invoke(main, ["merge", str(run)])
    assert merged.exit_code == 0 and "names its base" not in merged.output, merged.output
    config = run / "adapter" / "adapter_config.json"
    settings = json.loads(config.read_text())
    settings["base_model_name_or_path"] = "/models/base_seed1"
    config.write_text(json.dumps(settings))
    shutil.rmtree(run / "merged")
    merged = CliRunner().invoke(main, ["merge", str(run)])
    line = " ".join(merged.output.split())
    assert merged.exit_code == 0, merged.output
    assert f"warning: {config} names its base /models/base_seed1; model.base is {tiny_model_dir}" in line, (
        line
    )


def test_an_adapter_folder_or_an_exported_file_given_as_a_run_says_what_to_do(tmp_path, tiny_model_dir):
    """`merge ADAPTER` said "run `edgetune tune` first", `export ADAPTER` "neither a run directory nor
    an HF model directory", `export x.gguf --check` "a file, not a run directory": none said how."""
    from peft import LoraConfig

    adapter = tmp_path / "my-adapter"
    _save_adapter(tiny_model_dir, LoraConfig(r=2, target_modules=["q_proj"]), adapter)
    for command in (["merge", str(adapter)], ["export", str(adapter)]):
        result = CliRunner().invoke(main, command)
        line = " ".join(result.output.split())
        assert (
            result.exit_code == 2 and "but a peft adapter: to merge and export it, make a run folder" in line
        ), line
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    result = CliRunner().invoke(main, ["export", str(tmp_path / "model.gguf"), "--check"])
    line = " ".join(result.output.split())
    assert result.exit_code == 2 and "run `edgetune export MODEL --check --out OUT`" in line, line
