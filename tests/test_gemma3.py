"""Gemma 3 (the text-only 270M and 1B checkpoints) through every stage on a tiny random model:
tune with packing across its sliding-window layers, merge, GGUF and ONNX export, parity."""

import json

from click.testing import CliRunner
from test_gguf import TEXTS, parity
from test_tune import make_recipe

from edgetune.cli import main
from edgetune.tune.run import tune


def test_gemma3_tunes_merges_and_exports_with_parity(tmp_path, tiny_gemma3_dir):
    recipe = make_recipe(tmp_path, tiny_gemma3_dir, max_steps=4, eval_steps=2, save_steps=2, packing=True)
    result = tune(str(recipe))
    run = result.run_dir
    losses = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r["loss"] for r in losses if "loss" in r]
    assert len(train) == 4 and train[-1] < train[0]  # lr 1e-3 on 120 near-identical rows: it learns

    out = CliRunner().invoke(main, ["export", "--to", "gguf,onnx", "--quant", "f16,fp32"])
    assert out.exit_code == 0, out.output
    stage = json.loads((run / "manifest.json").read_text())["stages"]["export"]
    assert stage["gguf_parity_passed"] and stage["onnx_parity_passed"], stage
    # the exports hold the tuned model, not the base: llama.cpp agrees with the merged weights ...
    merged, base = run / "merged", tiny_gemma3_dir
    kl_tuned, top1 = parity(merged, run / "export" / "gguf" / "model-f16.gguf", TEXTS)
    assert kl_tuned <= 5e-4 and top1 >= 0.95
    # ... and the merge changed what the model computes (a LoRA that merged to nothing would pass above)
    kl_base, _ = parity(base, run / "export" / "gguf" / "model-f16.gguf", TEXTS)
    assert kl_base > 10 * kl_tuned
    assert (run / "export" / "onnx" / "fp32" / "model.onnx").is_file()


# Gemma's chat format, written for this test: no system role (a system message opens the first user
# turn), "model" for the assistant, every turn closed by <end_of_turn>, BOS from the template
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set head = messages[0]['content'] + '\\n\\n' %}"
    "{% set turns = messages[1:] %}{% else %}{% set head = '' %}{% set turns = messages %}{% endif %}"
    "{% for m in turns %}{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else 'user') + '\\n' }}"
    "{{ (head if loop.first else '') + m['content'] + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)


def gemma_style_tokenizer(out):
    """A tokenizer whose EOS (<eos>) is not what ends a chat turn (<end_of_turn>, a stop id only
    generation_config names): the Gemma situation in miniature."""
    from conftest import build_tokenizer
    from transformers import AutoTokenizer, GenerationConfig

    tok = build_tokenizer(chat_template=GEMMA_TEMPLATE, add_bos=True)
    tok.add_special_tokens(
        {"eos_token": "<eos>", "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]}
    )
    tok.save_pretrained(out)
    stops = [tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>")]
    GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=stops).save_pretrained(out)
    return AutoTokenizer.from_pretrained(out)


def test_a_turn_closed_by_its_own_token_counts_as_a_trained_stop(tmp_path):
    from conftest import chat_row

    from edgetune.data.prepare import encode_split
    from edgetune.data.render import Renderer
    from edgetune.data.rows import Example
    from edgetune.export.modelfile import stop_tokens

    tok = gemma_style_tokenizer(tmp_path)
    end_of_turn = tok.convert_tokens_to_ids("<end_of_turn>")
    renderer = Renderer(tok)
    assert renderer.stop_ids == {tok.eos_token_id, end_of_turn}
    row = chat_row("router lost uplink", '{"action": "reboot"}', system="Reply in JSON.")
    ex = Example("messages", messages=tuple((m["role"], m["content"]) for m in row["messages"]), source="d:1")
    assert renderer.prompt_text(ex).endswith(
        "Reply in JSON.\n\nrouter lost uplink<end_of_turn>\n<start_of_turn>model\n"
    )
    enc = renderer.encode(ex)
    supervised = tok.decode([t for t in enc.labels if t != -100])
    assert supervised == '{"action": "reboot"}<end_of_turn>\n'
    assert enc.input_ids.count(tok.bos_token_id) == 1
    # the tokenizer's <eos> is never in a Gemma chat, and that is not a missing stop
    assert tok.eos_token_id not in enc.labels and encode_split(renderer, [ex]).missing_eos == 0
    assert stop_tokens(tok, renderer.stop_ids)[:2] == ["<eos>", "<end_of_turn>"]
