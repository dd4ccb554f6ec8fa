import json

import pytest
from click.testing import CliRunner
from conftest import caller_state
from test_tune import make_recipe

from edgetune.cli import main
from edgetune.merge import merge
from edgetune.tune.run import tune


@pytest.fixture
def tuned_run(tmp_path, tiny_model_dir):
    return tune(str(make_recipe(tmp_path, tiny_model_dir, max_steps=6, eval_steps=3, save_steps=3))).run_dir


def test_merged_logits_match_the_adapter_model(tuned_run):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = merge(tuned_run)
    assert result.chosen == "full_precision" and result.kl_to_adapter <= 1e-5
    merged = AutoModelForCausalLM.from_pretrained(tuned_run / "merged").eval()
    manifest = json.loads((tuned_run / "manifest.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(manifest["base_model"]["path"]).eval()
    adapted = AutoModelForCausalLM.from_pretrained(manifest["base_model"]["path"])
    unmerged = PeftModel.from_pretrained(adapted, str(tuned_run / "adapter")).eval()
    ids = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 11]])
    with torch.no_grad():
        a = torch.log_softmax(merged(ids).logits, -1)
        b = torch.log_softmax(unmerged(ids).logits, -1)
        delta = (merged(ids).logits - base(ids).logits).abs().max()
    kl = (b.exp() * (b - a)).sum(-1).mean().item()
    assert kl <= 1e-5
    assert delta > 1e-4, "the merge changed nothing: the adapter was not applied"
    assert (tuned_run / "merged" / "model.safetensors").is_file()
    assert (tuned_run / "merged" / "tokenizer_config.json").is_file()
    assert manifest["stages"]["merge"]["chosen"] == "full_precision"
    assert manifest["stages"]["merge"]["data_changed_since_tune"] == []


def test_a_merge_called_from_python_leaves_the_callers_process_as_it_was(tuned_run, callers_settings):
    """merge set transformers' verbosity to ERROR and left it (the caller's own warnings went
    unshown from then on), and loading its models drew from the caller's torch RNG."""
    before = caller_state()
    merge(tuned_run)
    after = caller_state()
    assert [name for name in before if after[name] != before[name]] == []


def test_merge_refuses_nan_weights(tuned_run):
    from safetensors.torch import load_file, save_file

    path = tuned_run / "adapter" / "adapter_model.safetensors"
    tensors = load_file(path)
    first = next(iter(tensors))
    tensors[first][0, 0] = float("nan")
    save_file(tensors, path)
    result = CliRunner().invoke(main, ["merge", str(tuned_run)])
    assert result.exit_code == 1
    assert "NaN or Inf" in result.output
    assert not (tuned_run / "merged").exists()


def test_merge_warns_when_the_data_changed_since_tune(tuned_run, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text(data.read_text() + data.read_text().splitlines()[0] + "\n")
    result = CliRunner().invoke(main, ["merge", str(tuned_run)])
    assert result.exit_code == 0, result.output
    assert "data.train changed since the adapter was trained" in " ".join(result.output.split())
    stage = json.loads((tuned_run / "manifest.json").read_text())["stages"]["merge"]
    assert stage["data_changed_since_tune"] == ["data.train"]


def test_merge_ships_the_template_the_adapter_was_trained_under(tuned_run, tmp_path):
    """Not the one the data derives today: rewritten as another format, a plain-prompt run's data
    derived a chat template, and every export of the merged model would have prompted with it."""
    from transformers import AutoTokenizer

    saved = tuned_run / "adapter" / "chat_template.jinja"
    trained = saved.read_text() + "{# the adapter's #}"
    saved.write_text(trained)
    merge(tuned_run)
    shipped = AutoTokenizer.from_pretrained(tuned_run / "merged")
    assert shipped.chat_template == trained
    # the generic tokenizer class hands out token_type_ids, which generate(**inputs) refused
    assert list(shipped("a log line")) == ["input_ids", "attention_mask"]


def test_merge_without_adapter_is_a_clear_error(tmp_path):
    (tmp_path / "run").mkdir()
    result = CliRunner().invoke(main, ["merge", str(tmp_path / "run")])
    assert result.exit_code == 2 and "no adapter/" in result.output


@pytest.mark.slow
def test_qlora_merge_scores_both_candidates(tmp_path, tiny_model_dir):
    run = tune(
        str(make_recipe(tmp_path, tiny_model_dir, method="qlora", max_steps=2, eval_steps=2, save_steps=2))
    ).run_dir
    result = merge(run)
    assert set(result.candidates) == {"full_precision", "dequantized_nf4"}
    best = min(result.candidates, key=lambda k: result.candidates[k]["valid_loss"])
    assert result.chosen == best
    # the adapter was trained against the NF4 weights: the dequantised merge reproduces it closely
    assert result.candidates["dequantized_nf4"]["kl_to_adapter"] < 1e-3
    stage = json.loads((run / "manifest.json").read_text())["stages"]["merge"]
    assert stage["candidates"] == result.candidates


def _truncate(path, keep=100):
    path.write_bytes(path.read_bytes()[:keep])


CORRUPT_RUNS = [
    (["merge"], "manifest.json", lambda p: p.write_text("[1, 2]"), "corrupt manifest (the top level is not"),
    (["merge"], "manifest.json", lambda p: p.write_text('{"stages": "x"}'), "(stages is not an object)"),
    (["merge"], "manifest.json", lambda p: p.write_bytes(b"\xff\xfe{}"), "corrupt manifest (not UTF-8"),
    # cut short: where that is said, so is how to go on
    (["merge"], "manifest.json", lambda p: p.write_text('{"stages": {'), "line 1); move it aside to start"),
    (["merge"], "adapter/adapter_config.json", lambda p: p.write_text('{"r": 16,'), "invalid JSON"),
    (["merge"], "adapter/adapter_config.json", lambda p: p.write_text("{}"), "no peft_type"),
    (["merge"], "adapter/adapter_model.safetensors", _truncate, "adapter_model.safetensors: corrupt"),
    (["merge"], "adapter/adapter_model.safetensors", lambda p: p.unlink(), "no adapter_model.safetensors"),
    (
        ["tune", "--resume", "--run-dir"],
        "LAST/trainer_state.json",
        lambda p: p.write_text("{"),
        "invalid JSON",
    ),
    (
        ["tune", "--resume", "--run-dir"],
        "LAST/trainer_state.json",
        lambda p: p.write_text("{}"),
        "global_step",
    ),
    (["tune", "--resume", "--run-dir"], "LAST/adapter_model.safetensors", _truncate, "corrupt safetensors"),
]


def test_a_damaged_run_is_named_file_by_file_with_exit_2(tuned_run):
    """Hand edits, a full disk, a copy cut short: each damaged file is one line naming it, before
    any model loads, and the run is left as it was."""
    import shutil

    last = sorted((tuned_run / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[
        -1
    ]
    for i, (command, name, damage, message) in enumerate(CORRUPT_RUNS):
        run = tuned_run.with_name(f"damaged-{i}")
        shutil.copytree(tuned_run, run)
        target = run / name.replace("LAST", f"checkpoints/{last.name}")
        damage(target)
        if command[0] == "tune":  # a run to resume: stopped after its last checkpoint, no adapter yet
            shutil.rmtree(run / "adapter")
        before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
        result = CliRunner().invoke(main, [*command, str(run)])
        assert result.exit_code == 2, (name, result.output)
        assert message in result.output and len(result.output.strip().splitlines()) == 1, (
            name,
            result.output,
        )
        assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before
    (tuned_run / "metrics.jsonl").open("a").write('[1]\n"x"\n{"step": "nine"}\n')
    from edgetune.tune.callbacks import truncate_metrics

    truncate_metrics(tuned_run / "metrics.jsonl", 3)  # records of no shape of ours are dropped, no crash
    assert all(
        json.loads(line)["step"] <= 3 for line in (tuned_run / "metrics.jsonl").read_text().splitlines()
    )


def test_an_adapter_on_a_tied_lm_head_is_refused_by_tune_and_by_merge(tuned_run, tmp_path, tiny_model_dir):
    """The tiny model ties its LM head to its input embedding (as SmolLM2 does): merged into the
    shared weight, a LoRA on lm_head would change the embedding too (top-1 agreement with the
    adapter model fell to 4% in a real 30-step run), so neither stage lets it through."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    result = CliRunner().invoke(
        main,
        [
            "tune",
            str(make_recipe(tmp_path, tiny_model_dir, max_steps=2)),
            "--set",
            "train.lora.target_modules=q_proj,lm_head",
        ],  # fmt: skip
    )
    assert result.exit_code == 2, result.output
    assert (
        "train.lora.target_modules: lm_head shares its weight with the tied input embedding" in result.output
    )
    # an adapter made elsewhere, in place of the run's own
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = LoraConfig(
        r=4, target_modules=["q_proj", "lm_head"], init_lora_weights=False, task_type="CAUSAL_LM"
    )
    get_peft_model(base, config).save_pretrained(str(tuned_run / "adapter"))
    result = CliRunner().invoke(main, ["merge", str(tuned_run)])
    assert result.exit_code == 2, result.output
    assert (
        "the adapter changes lm_head, whose weight the base model ties to its input embedding"
        in result.output
    )
    assert not (tuned_run / "merged").exists()


def test_score_is_the_models_own_token_mean_loss_with_the_head_on_supervised_rows(
    tiny_model_dir, tiny_tokenizer
):
    import torch
    from transformers import AutoModelForCausalLM

    from edgetune.data.render import Renderer
    from edgetune.data.rows import Example
    from edgetune.merge import _batches, score

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    r = Renderer(tiny_tokenizer)
    examples = [
        r.encode(
            Example("messages", messages=(("user", "q " * (2 * i + 1)), ("assistant", "a b " * (i + 1))))
        )
        for i in range(10)  # two batches of 8 and 2, padded
    ]
    rows = []
    model.get_output_embeddings().register_forward_hook(lambda m, a, out: rows.append(out.shape[0]))
    loss, kl, logprobs = score(model, examples, tiny_tokenizer.pad_token_id)
    supervised = sum(e.n_supervised for e in examples)
    assert sum(rows) == supervised == sum(lp.shape[0] for lp in logprobs)
    total = 0.0
    with torch.no_grad():
        for batch in _batches(examples, tiny_tokenizer.pad_token_id):
            total += model(**batch).loss.item() * int((batch["labels"][:, 1:] != -100).sum())
    assert loss == pytest.approx(total / supervised, rel=1e-5)
    assert score(model, examples, tiny_tokenizer.pad_token_id, logprobs)[1] == pytest.approx(0.0, abs=1e-6)


def test_the_kl_reference_is_bounded_and_the_loss_still_covers_every_token(
    tiny_model_dir, tiny_tokenizer, monkeypatch
):
    """A 10% split of 50,000 examples would keep ~100 GB of log-probabilities: the KL's reference
    stops at a budget, spread over the batches it filled; the loss does not."""
    import torch
    from transformers import AutoModelForCausalLM

    import edgetune.merge as merge_module
    from edgetune.data.render import Renderer
    from edgetune.data.rows import Example

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    r = Renderer(tiny_tokenizer)
    examples = [
        r.encode(Example("messages", messages=(("user", "q " * (i + 1)), ("assistant", "a b c " * (i + 1)))))
        for i in range(12)
    ]
    full_loss, _, full = merge_module.score(model, examples, tiny_tokenizer.pad_token_id)
    first_batch = full[0].size(0)
    budget = first_batch + 3  # the whole first batch and three tokens of the second
    vocab = model.config.vocab_size
    monkeypatch.setattr(merge_module, "KL_REFERENCE_BYTES", budget * 4 * vocab)
    loss, _, kept = merge_module.score(model, examples, tiny_tokenizer.pad_token_id)
    assert [lp.size(0) for lp in kept] == [first_batch, 3]
    assert loss == full_loss
    # against a model that answers differently: the KL over the kept tokens only, not diluted by the rest
    other = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        other.model.norm.weight.mul_(3.0)
    _, kl, _ = merge_module.score(other, examples, tiny_tokenizer.pad_token_id, kept)
    _, kl_all, _ = merge_module.score(other, examples, tiny_tokenizer.pad_token_id, full)
    _, kl_first, _ = merge_module.score(other, examples, tiny_tokenizer.pad_token_id, [full[0], full[1][:3]])
    assert kl > 0 and kl == pytest.approx(kl_first) and kl_all > 0


def test_replies_that_end_in_the_templates_turn_end_not_eos_stop_there(tmp_path):
    """A base model whose generation_config knows only its EOS (<|endoftext|>) while its ChatML
    template ends each reply in <|im_end|> (Qwen2.5's base models): the tuned model learns to write
    <|im_end|>, which nothing stopped at (chat ran to --max-new-tokens), and every example was
    warned about as never supervising EOS."""
    from conftest import build_tiny_model, build_tokenizer
    from transformers import GenerationConfig

    from edgetune.chat import open_chat

    tokenizer = build_tokenizer(eos_token="<|endoftext|>")
    model = build_tiny_model(tmp_path, tokenizer, "LlamaForCausalLM")
    tuned = tune(str(make_recipe(tmp_path, model, max_steps=2, eval_steps=2, save_steps=2)))
    assert not [w for w in tuned.warnings if "EOS" in w], tuned.warnings
    merge(tuned.run_dir)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    stops = GenerationConfig.from_pretrained(tuned.run_dir / "merged").eos_token_id
    assert set(stops) == {im_end, tokenizer.eos_token_id}
    assert im_end in open_chat(tuned.run_dir, threads=1).eos_ids


def test_merge_removes_what_a_killed_merge_left_beside_its_folder(tuned_run):
    """Each killed merge left a staging copy of the whole model (538 MB on the demo) for good."""
    staging = tuned_run / ".merged.abc123.tmp"
    staging.mkdir()
    (staging / "model.safetensors").write_bytes(b"x" * 1024)
    (tuned_run / ".merged.old-4242").mkdir()
    merge(tuned_run)
    assert sorted(p.name for p in tuned_run.glob(".merged*")) == []
    assert (tuned_run / "merged" / "model.safetensors").is_file()


def test_the_trained_template_of_a_custom_code_tokenizer_is_read_with_the_recipes_trust(tmp_path):
    """model.trust_remote_code: true covers the adapter's copy of the tokenizer too (merge failed
    as an internal error, or asked on a terminal whether to run the code)."""
    from conftest import build_tokenizer

    from edgetune.merge import trained_template

    adapter = tmp_path / "adapter"
    build_tokenizer().save_pretrained(adapter)
    (adapter / "my_tok.py").write_text(
        "from transformers import PreTrainedTokenizerFast\nclass MyTokFast(PreTrainedTokenizerFast):\n    pass\n"
    )
    config = json.loads((adapter / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="MyTokFast", auto_map={"AutoTokenizer": [None, "my_tok.MyTokFast"]})
    (adapter / "tokenizer_config.json").write_text(json.dumps(config))
    assert "<|im_start|>" in trained_template(adapter, "derived", trust_remote_code=True)


def test_a_base_changed_since_tune_is_refused_and_another_shape_is_one_line(
    tmp_path, tiny_model_dir, tiny_tokenizer
):
    """A local base re-saved after tune: the merge had folded the adapter into other weights, exit 0,
    and its KL to the adapter (measured on the same wrong base) looked perfect."""
    import shutil

    from conftest import build_tiny_model

    base = shutil.copytree(tiny_model_dir, tmp_path / "base")
    run = tune(str(make_recipe(tmp_path, base, max_steps=2, eval_steps=2, save_steps=2))).run_dir
    other = build_tiny_model(
        tmp_path / "other", tiny_tokenizer, "LlamaForCausalLM"
    )  # same shapes, new weights
    shutil.copy(other / "model.safetensors", base / "model.safetensors")
    changed = CliRunner().invoke(main, ["merge", str(run)])
    assert changed.exit_code == 2 and "model.base" in changed.output, changed.output
    assert "its files changed since the adapter was trained on them" in " ".join(changed.output.split())
    assert not (run / "merged").exists()
    # a run recorded before base hashes were (no sha256), merged onto a model of other shapes
    manifest = json.loads((run / "manifest.json").read_text())
    del manifest["base_model"]["sha256"]
    (run / "manifest.json").write_text(json.dumps(manifest))
    wider = build_tiny_model(tmp_path / "wider", tiny_tokenizer, "LlamaForCausalLM", hidden_size=96)
    shutil.rmtree(base)
    shutil.copytree(wider, base)
    result = CliRunner().invoke(main, ["merge", str(run)])
    assert result.exit_code == 2, result.output
    assert (
        "was trained on another model than model.base" in result.output and "size mismatch" in result.output
    )
    assert "Traceback" not in result.output and not (run / "merged").exists()
