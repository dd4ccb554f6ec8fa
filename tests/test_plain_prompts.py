"""A run that trained its prompts plainly (no chat template) is benched, checked, chatted with and
shipped with plain prompts too: the fallback template saved with its merged model must not turn
prompt-completion rows into chats after training."""

import json
import shutil

import pytest
from conftest import build_tiny_model, write_jsonl

from edgetune.errors import InputError


@pytest.mark.parametrize("case", ["base model, template auto", "chat model, template plain"])
def test_a_run_trained_on_plain_prompts_is_prompted_plainly_after_training(
    tmp_path, tiny_tokenizer, base_tokenizer, case
):
    from edgetune.chat import open_chat
    from edgetune.config import load_recipe
    from edgetune.data.prepare import prepare
    from edgetune.export.run import export
    from edgetune.models import ResolvedModel, load_tokenizer
    from edgetune.tune.run import tune

    base = build_tiny_model(
        tmp_path, base_tokenizer if "base" in case else tiny_tokenizer, "LlamaForCausalLM"
    )
    rows = [{"prompt": f"log {i}: link down on eth{i % 4}\n", "completion": json.dumps({"port": i % 4})} for i in range(60)]  # fmt: skip
    write_jsonl(tmp_path / "data.jsonl", rows)
    template = "auto" if "auto" in case else "plain"
    (tmp_path / "recipe.yaml").write_text(
        f"name: plain\nmodel:\n  base: {base}\ndata:\n  train: data.jsonl\n  max_seq_len: 64\n"
        f"  template: {template}\ntrain:\n  max_steps: 2\n  batch_size: 4\n  eval_steps: 2\n  save_steps: 2\n"
        "  threads: 1\n  precision: fp32\nexport:\n  formats: [gguf]\n  gguf:\n    quants: [f16]\n"
        "    imatrix: false\n"
    )
    run = tune(str(tmp_path / "recipe.yaml")).run_dir
    export(run)
    recipe = load_recipe(str(run / "recipe.yaml"))
    merged = load_tokenizer(ResolvedModel(str(run / "merged"), run / "merged", "local"))
    after = prepare(recipe.data, merged)  # what bench and the export's parity check render
    example = after.splits.test[0] if after.splits.test else after.splits.valid[0]
    assert after.renderer.prompt_text(example) == example.prompt  # as training gave it
    # the shipped chat template is the plain one, so front-ends that apply a file's template
    # (llama-server, llama-cpp-python, transformers) prompt as training did, not in the base's
    # chat format (or edgetune's ### User: fallback)
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    from edgetune.data.render import PLAIN_CHAT_TEMPLATE

    gguf_file = run / "export" / "gguf" / "model-f16.gguf"
    for saved in (run / "adapter", run / "merged"):
        assert AutoTokenizer.from_pretrained(saved).chat_template == PLAIN_CHAT_TEMPLATE, saved
    assert GGUFReader(str(gguf_file)).get_field("tokenizer.chat_template").contents() == PLAIN_CHAT_TEMPLATE
    conversation = [{"role": "system", "content": "be brief"}, {"role": "user", "content": example.prompt}]
    applied = AutoTokenizer.from_pretrained(run / "merged").apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=False
    )
    assert applied == example.prompt
    modelfile = (run / "export" / "gguf" / "model-f16.Modelfile").read_text()
    assert 'TEMPLATE """{{ .Prompt }}"""' in modelfile and "SYSTEM" not in modelfile
    shipped = tmp_path / "dist" / "model-f16.gguf"  # out of its run, as examples/Makefile ships it
    shipped.parent.mkdir()
    shutil.copy(gguf_file, shipped)
    for artifact in (run, gguf_file, shipped):
        session = open_chat(artifact, threads=1)
        assert session.plain, artifact
        assert session.prompt_ids(
            [{"role": "user", "content": example.prompt}]
        ) == after.renderer.ids_for_text(example.prompt)
        session.reply("log 3: link down on eth3\n", max_new_tokens=2)
        assert session.history == []  # a plain prompt has no turns to keep
        if "plain" in case:  # a tokenizer with no BOS: an empty prompt is no token to start from
            with pytest.raises(InputError, match="the prompt is empty"):
                session.reply("", max_new_tokens=2)
