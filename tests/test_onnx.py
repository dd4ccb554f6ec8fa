"""ONNX export: the optimum-traced decoder must compute what torch computes, with and without its KV
cache; quantised variants must stay close, load in optimum's ORTModelForCausalLM, and keep their
external data inside their directory."""

import json
import os
import shutil

import numpy as np
import pytest

from edgetune.bench.runners import OnnxRunner, Target, Uncached, greedy
from edgetune.errors import InputError
from edgetune.export.onnx_export import export_onnx
from edgetune.export.onnx_runtime import OnnxDecoder
from edgetune.export.settings import OnnxExportConfig

PROMPTS = [
    "<|im_start|>user\nThe router in the lobby lost its uplink, error E1042.<|im_end|>\n<|im_start|>assistant\n",
    "battery health 40% below threshold on inverter pv-inv-roof-02",
]


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def torch_logprobs(model_dir, ids):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return log_softmax(model(torch.tensor([ids])).logits[0].double().numpy())


def kl_top1(a, b):
    return float((np.exp(a) * (a - b)).sum(-1).mean()), float((a.argmax(-1) == b.argmax(-1)).mean())


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    result = export_onnx(tiny_model_dir, out, ["fp32", "fp16", "int8", "int4"], OnnxExportConfig())
    return tiny_model_dir, out, result


def test_fp32_logits_match_torch_and_cache_changes_nothing(exported, tiny_tokenizer):
    model_dir, out, _ = exported
    decoder = OnnxDecoder(out / "fp32")
    for text in PROMPTS:
        ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
        kl, top1 = kl_top1(torch_logprobs(model_dir, ids), log_softmax(decoder.logits(ids)))
        assert kl <= 1e-5 and top1 == 1.0
        runner = OnnxRunner(Target("fp32", "onnx", "fp32", "onnxruntime", "cpu", out / "fp32"))
        cached = greedy(runner, ids, [], 24)
        assert cached == greedy(Uncached(runner), ids, [], 24)
        assert len(cached) == 24


def test_variants_are_self_contained_and_smaller(exported, tiny_tokenizer):
    import onnx
    from transformers import AutoTokenizer

    _, out, result = exported
    assert [a.quant for a in result.artifacts] == ["fp32", "fp16", "int8", "int4"]
    sizes = {a.quant: a.size_bytes for a in result.artifacts}
    assert sizes["int4"] < sizes["int8"] < sizes["fp32"] and sizes["fp16"] < 0.6 * sizes["fp32"]
    for a in result.artifacts:
        names = {p.name for p in a.path.iterdir()}
        assert {"model.onnx", "config.json", "generation_config.json", "tokenizer.json"} <= names
        # transformers saves the template in chat_template.jinja; transformers.js and TGI read the
        # tokenizer_config.json key, which transformers saves no more
        assert (
            json.loads((a.path / "tokenizer_config.json").read_text())["chat_template"]
            == (a.path / "chat_template.jinja").read_text()
            == tiny_tokenizer.chat_template
        )
        assert len(a.sha256) == 64
        onnx.checker.check_model(str(a.path / "model.onnx"))  # fp16's casts came after their readers
        # from a merged folder saved before edgetune named a causal LM's inputs: no token_type_ids
        assert list(AutoTokenizer.from_pretrained(a.path)("a log line")) == ["input_ids", "attention_mask"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging or trace left
    ops = {n.op_type for n in onnx.load(str(out / "int4" / "model.onnx")).graph.node}
    assert {"MatMulNBits", "GatherBlockQuantized"} <= ops
    # the tied LM head is quantised too (it was a Transpose of the embedding in optimum's graph)
    head = [n for n in onnx.load(str(out / "int8" / "model.onnx")).graph.node if "lm_head" in n.name]
    assert [n.op_type for n in head] == ["MatMulNBits"]


@pytest.mark.parametrize("quant", ["fp32", "fp16", "int8", "int4"])
def test_prefill_computes_the_last_position_only_and_the_same_numbers(exported, tiny_tokenizer, quant):
    """The LM head runs on the last prompt position only (the time to first token no longer
    carries it over the whole prompt); by default every position, as optimum's graph had."""
    _, out, _ = exported
    decoder = OnnxDecoder(out / quant)
    assert "logits_from" in decoder.input_names
    ids = tiny_tokenizer(PROMPTS[0], add_special_tokens=False)["input_ids"]
    every, _ = decoder.forward(ids, None, 0)
    last, past = decoder.forward(ids, None, 0, last_only=True)
    assert every.shape[0] == len(ids) and last.shape == (1, every.shape[1])
    np.testing.assert_allclose(last[0], every[-1], rtol=1e-4, atol=1e-4)
    # the cache is the whole prompt's either way: the next step sees the same context
    step_after_last, _ = decoder.forward([ids[-1]], past, len(ids))
    step_after_every, _ = decoder.forward([ids[-1]], decoder.forward(ids, None, 0)[1], len(ids))
    np.testing.assert_allclose(step_after_last, step_after_every, rtol=1e-4, atol=1e-4)


def test_an_export_without_the_input_still_decodes(tiny_model_dir, tiny_tokenizer, tmp_path):
    from edgetune.export.onnx_export import trace_fp32

    trace_fp32(tiny_model_dir, tmp_path / "old")  # optimum's graph as is: what earlier exports hold
    decoder = OnnxDecoder(tmp_path / "old")
    ids = tiny_tokenizer(PROMPTS[1], add_special_tokens=False)["input_ids"]
    assert "logits_from" not in decoder.input_names
    logits, _ = decoder.forward(ids, None, 0, last_only=True)
    assert logits.shape[0] == len(ids)  # every row, as before
    runner = OnnxRunner(Target("old", "onnx", "fp32", "onnxruntime", "cpu", tmp_path / "old"))
    assert greedy(runner, ids, [], 8) == greedy(Uncached(runner), ids, [], 8)


@pytest.mark.parametrize("quant, max_kl", [("fp16", 5e-4), ("int8", 0.01), ("int4", 0.2)])
def test_quantised_variants_stay_close(exported, tiny_tokenizer, quant, max_kl):
    model_dir, out, _ = exported
    decoder = OnnxDecoder(out / quant)
    ids = tiny_tokenizer(PROMPTS[0], add_special_tokens=False)["input_ids"]
    kl, top1 = kl_top1(torch_logprobs(model_dir, ids), log_softmax(decoder.logits(ids)))
    assert 0 < kl <= max_kl and top1 >= 0.8


def test_optimum_loads_every_variant_and_generates_the_same_tokens(exported, tiny_tokenizer):
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM

    _, out, result = exported
    ids = tiny_tokenizer(PROMPTS[0], add_special_tokens=False)["input_ids"]
    for a in result.artifacts:
        model = ORTModelForCausalLM.from_pretrained(a.path)
        got = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=12,
            min_new_tokens=12,
            do_sample=False,
        )[0, len(ids) :].tolist()
        ours = greedy(OnnxRunner(Target(a.quant, "onnx", a.quant, "onnxruntime", "cpu", a.path)), ids, [], 12)
        assert got == ours, a.quant


def test_onnxruntime_genai_runs_every_variant_as_onnxruntime_does(exported, tiny_tokenizer):
    """optimum writes no genai_config.json: onnxruntime-genai, the runtime devices run ONNX LLMs
    in, refused the folders ("genai_config.json not found")."""
    import onnxruntime_genai as og

    _, out, result = exported
    ids = tiny_tokenizer(PROMPTS[0], add_special_tokens=False)["input_ids"]
    for a in result.artifacts:
        config = json.loads((a.path / "genai_config.json").read_text())
        assert config["model"]["type"] == "decoder" and config["model"]["decoder"]["num_hidden_layers"] == 2
        assert "genai_config.json" in a.files
        model = og.Model(str(a.path))
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(ids) + 12)
        generator = og.Generator(model, params)
        generator.append_tokens(ids)
        while not generator.is_done():
            generator.generate_next_token()
        got = [int(t) for t in generator.get_sequence(0)][len(ids) :]
        eos = config["model"]["eos_token_id"]
        ours = greedy(
            OnnxRunner(Target(a.quant, "onnx", a.quant, "onnxruntime", "cpu", a.path)), ids, eos, 12
        )
        assert got == ours and got, a.quant


def test_prompts_near_or_past_the_context_are_run_in_genai_as_far_as_they_fit(tmp_path, tiny_tokenizer):
    """genai refuses a max_length past the context, and that had failed every prompt of the folder
    ("misreads the graph?") where onnxruntime had answered them all."""
    from conftest import build_tiny_model

    from edgetune.data.render import Renderer
    from edgetune.data.rows import Example
    from edgetune.export.parity import check_onnx

    model = build_tiny_model(tmp_path, tiny_tokenizer, "LlamaForCausalLM", max_position_embeddings=64)
    (folder,) = [
        a.path for a in export_onnx(model, tmp_path / "onnx", ["fp32"], OnnxExportConfig()).artifacts
    ]
    renderer = Renderer(tiny_tokenizer)
    asked = [
        "router lost uplink",
        "battery low on inverter pv-inv-roof-02 " * 2,
        "disk full on gateway " * 12,
    ]
    examples = [
        Example("messages", messages=(("user", a), ("assistant", "ok")), source=f"t:{i}")
        for i, a in enumerate(asked)
    ]
    lengths = [len(renderer.ids_for_text(renderer.prompt_text(ex))) for ex in examples]
    assert lengths[0] + 32 < 64 < lengths[1] + 32 and lengths[1] < 64 <= lengths[2], lengths
    (row,) = check_onnx(model, [("fp32", folder)], renderer, examples, 32)
    assert row.genai == 1.0 and row.passed, row.failures
    assert row.notes == ["1 prompt fills the model's 64 positions: not run in onnxruntime-genai"]


def test_external_data_is_written_loaded_and_confined(tiny_model_dir, tmp_path, tiny_tokenizer):
    import onnx

    out = tmp_path / "onnx"
    export_onnx(tiny_model_dir, out, ["fp32"], OnnxExportConfig(), force_external=True)
    variant = out / "fp32"
    assert (variant / "model.onnx_data").stat().st_size > (variant / "model.onnx").stat().st_size
    ids = tiny_tokenizer(PROMPTS[1], add_special_tokens=False)["input_ids"]
    kl, _ = kl_top1(torch_logprobs(tiny_model_dir, ids), log_softmax(OnnxDecoder(variant).logits(ids)))
    assert kl <= 1e-5

    def tampered(location):
        bad = tmp_path / f"bad{abs(hash(location))}"
        shutil.copytree(variant, bad)
        model = onnx.load(str(bad / "model.onnx"), load_external_data=False)
        for t in model.graph.initializer:
            for entry in t.external_data:
                if entry.key == "location":
                    entry.value = location
        onnx.save_model(model, str(bad / "model.onnx"))
        return bad

    secret = tmp_path / "secret.bin"
    secret.write_bytes(os.urandom(1 << 20))
    for location in ["../secret.bin", str(secret), "missing.bin"]:
        with pytest.raises(InputError, match="model.onnx: tensor"):
            OnnxDecoder(tampered(location))
    link = tampered("link.bin")
    (link / "link.bin").symlink_to(secret)
    with pytest.raises(InputError, match="resolves outside"):
        OnnxDecoder(link)
    short = tampered("model.onnx_data")
    with open(short / "model.onnx_data", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(InputError, match="requested, the file has 1000"):
        OnnxDecoder(short)


def test_an_architecture_without_the_attention_shape_is_refused_before_tracing(tiny_model_dir, tmp_path):
    """GPT-2's config says n_head, not num_attention_heads: refused at once, nothing written (it
    was traced and written, then failed in the parity check on the folder's config)."""
    from edgetune.errors import ModelError

    model = tmp_path / "gpt2ish"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    config["n_head"] = config.pop("num_attention_heads")
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ModelError, match="names no num_attention_heads .* does not support this architecture"
    ):
        export_onnx(model, tmp_path / "onnx", ["fp32"], OnnxExportConfig())
    assert not list((tmp_path / "onnx").glob("*"))


def test_export_after_tune_writes_variants_and_parity(tmp_path, tiny_model_dir):
    from click.testing import CliRunner
    from test_tune import make_recipe

    from edgetune.cli import main
    from edgetune.tune.run import tune

    run = tune(str(make_recipe(tmp_path, tiny_model_dir, max_steps=4, eval_steps=2, save_steps=2))).run_dir
    result = CliRunner().invoke(main, ["export", "--to", "onnx", "--quant", "fp32,int8"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (run / "export" / "onnx").iterdir()) == ["fp32", "int8", "parity.json"]
    stage = json.loads((run / "manifest.json").read_text())["stages"]["export"]
    rows = {r["quant"]: r for r in stage["onnx_parity"]}
    assert stage["onnx_parity_passed"] and rows["fp32"]["kl"] <= 1e-5
    assert rows["fp32"]["kv_cache"] == 1.0 and rows["fp32"]["greedy"] == 1.0 and rows["fp32"]["ids_equal"]
    assert rows["int8"]["kv_cache"] is None
    assert rows["fp32"]["genai"] == rows["int8"]["genai"] == 1.0 and rows["fp32"]["notes"] == []
    assert "onnx/fp32" in result.output and "KV cache" in result.output and "genai" in result.output

    # a tokenizer that splits text otherwise: said where, not guessed at ("BOS or pre-tokenizer")
    tokenizer_json = run / "export" / "onnx" / "fp32" / "tokenizer.json"
    spec = json.loads(tokenizer_json.read_text())
    vocab = spec["model"]["vocab"]  # two of its commonest pieces swap ids
    vocab["e"], vocab["t"] = vocab["t"], vocab["e"]
    tokenizer_json.write_text(json.dumps(spec))
    checked = CliRunner().invoke(main, ["export", "--check", "--to", "onnx"])
    assert checked.exit_code == 3, checked.output
    said = " ".join(checked.output.split())
    assert "onnx/fp32: prompt token ids differ from the tokenizer's: on " in said, said
    assert "the first, from token " in said and "the file reads" in said, said

    # a lost chat template is caught by the check, exit 3
    config = json.loads((run / "export" / "onnx" / "int8" / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (run / "export" / "onnx" / "int8" / "tokenizer_config.json").write_text(json.dumps(config))
    (run / "export" / "onnx" / "int8" / "chat_template.jinja").unlink(missing_ok=True)
    checked = CliRunner().invoke(main, ["export", "--check", "--to", "onnx"])
    assert checked.exit_code == 3, checked.output
    # named as what it is, not as a tokenizer mismatch
    assert "onnx/int8: the folder's chat template is not the model's" in " ".join(checked.output.split())
    # a folder without its tokenizer: one line naming it (an internal AttributeError was)
    (run / "export" / "onnx" / "int8" / "tokenizer.json").unlink()
    checked = CliRunner().invoke(main, ["export", "--check", "--to", "onnx"])
    assert checked.exit_code == 2, checked.output
    assert "int8: no tokenizer files (tokenizer.json, ...)" in " ".join(checked.output.split())


def test_an_export_called_from_python_leaves_the_callers_process_as_it_was(
    tiny_model_dir, tmp_path, callers_settings
):
    """Loading the model that ONNX parity is checked against drew from the caller's torch RNG, which
    export left moved on."""
    from conftest import caller_state

    from edgetune.export.run import export

    before = caller_state()
    result = export(tiny_model_dir, ["onnx"], ["fp32"], out=tmp_path / "out")
    after = caller_state()
    assert [row.quant for row in result["parity"]] == ["fp32"]
    assert [name for name in before if after[name] != before[name]] == []


def test_demo_recipe_exports_three_onnx_variants():
    from edgetune.config import load_recipe

    export = load_recipe("demo").export
    assert "onnx" in export.formats and export.onnx.quants == ["fp32", "int8", "int4"]


@pytest.mark.slow
def test_smollm2_onnx_export_passes_parity(tmp_path):
    from edgetune.export.run import export
    from edgetune.models import resolve_model

    model = resolve_model("smollm2-135m-instruct")
    result = export(model.path, ["onnx"], ["fp32", "int4"], out=tmp_path / "out")
    rows = {r.quant: r for r in result["parity"]}
    assert rows["fp32"].passed and rows["fp32"].kl <= 1e-5 and rows["fp32"].kv_cache == 1.0
    assert rows["fp32"].greedy == 1.0 and rows["fp32"].ids_equal
    assert rows["int4"].ids_equal and rows["int4"].kl <= 0.15
    sizes = {a.quant: a.size_bytes for a in result["onnx"].artifacts}
    assert sizes["int4"] < 0.3 * sizes["fp32"]


def test_torch_reference_is_plain_greedy_whatever_the_generation_config(
    tmp_path, tiny_model_dir, tiny_tokenizer
):
    """Every runtime decodes by argmax; the reference must too, even when the model's
    generation_config.json asks generate() for a repetition penalty."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    from edgetune.data.render import Renderer
    from edgetune.data.rows import Example
    from edgetune.export.parity import torch_reference

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    (model_dir / "generation_config.json").write_text(json.dumps({"repetition_penalty": 10.0}))
    renderer = Renderer(tiny_tokenizer)
    ex = Example("messages", messages=(("user", "router lost uplink"), ("assistant", "ok")), source="t:1")
    (ref,) = torch_reference(model_dir, renderer, [ex], max_new_tokens=16)

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids, want = list(ref.prompt_ids), []
    with torch.no_grad():
        for _ in range(16):
            token = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            want.append(token)
            ids.append(token)
            if token == tiny_tokenizer.eos_token_id:
                break
    assert ref.greedy == want
    assert len(set(want)) < len(want)  # the plain answer repeats tokens: a penalty would have changed it


def test_named_chat_templates_reach_the_onnx_directory_and_the_modelfile(tmp_path, tiny_tokenizer):
    """A model with a default and a tool_use template (as Hermes-2-Pro ships): the ONNX directory
    keeps both, so its own tokenizer prompts as the merged model does and parity passes; the
    Modelfile gets the default one's Go form."""
    from conftest import build_tiny_model
    from transformers import AutoTokenizer

    from edgetune.export.run import export

    model = build_tiny_model(tmp_path, tiny_tokenizer, "LlamaForCausalLM")
    tok = AutoTokenizer.from_pretrained(model)
    tok.chat_template = {"default": tiny_tokenizer.chat_template, "tool_use": "{{ 'tools' }}"}
    tok.save_pretrained(model)
    result = export(model, ["gguf", "onnx"], ["f16", "fp32"], out=tmp_path / "out")
    assert all(row.passed for row in result["parity"]), [row.failures for row in result["parity"]]
    shipped = AutoTokenizer.from_pretrained(tmp_path / "out" / "onnx" / "fp32").chat_template
    assert shipped == {"default": tiny_tokenizer.chat_template, "tool_use": "{{ 'tools' }}"}
    # the default as a string for other readers: onnxruntime-genai's tokenizer refused the list form
    config = json.loads((tmp_path / "out" / "onnx" / "fp32" / "tokenizer_config.json").read_text())
    assert config["chat_template"] == tiny_tokenizer.chat_template
    assert [
        (row.artifact, row.genai, row.notes) for row in result["parity"] if row.artifact.startswith("onnx")
    ] == [("onnx/fp32", 1.0, [])]
    assert "<|im_start|>{{ .Role }}" in (tmp_path / "out" / "gguf" / "model-f16.Modelfile").read_text()


def test_a_model_past_protobufs_2_gb_keeps_its_tensors_outside_and_skips_optimums_post_processing(
    tiny_model_dir, tmp_path, tiny_tokenizer, monkeypatch
):
    """Past 2 GB protobuf cannot serialise a graph, nor (upb) even measure it: optimum's
    post-processing and our own save measured it that way and failed every model over ~500M
    parameters. With the limit lowered to the tiny model's size, the export takes the big-model
    path: no post-processing, tensors in model.onnx_data, the same logits."""
    from types import SimpleNamespace

    from google.protobuf.message import EncodeError

    import edgetune.export.onnx_export as onnx_export
    import edgetune.export.onnx_graph as onnx_graph

    def unmeasurable():
        raise EncodeError("Failed to serialize proto")

    huge = SimpleNamespace(graph=SimpleNamespace(initializer=[]), ByteSize=unmeasurable)
    assert onnx_graph.too_big_for_protobuf(huge)  # what upb does past 2 GB
    assert onnx_export.fp32_bytes(tiny_model_dir) > 0
    limit = onnx_export.fp32_bytes(tiny_model_dir) // 2
    monkeypatch.setattr(onnx_graph, "PROTOBUF_LIMIT", limit)
    monkeypatch.setattr(onnx_export, "PROTOBUF_LIMIT", limit)
    calls = []
    real = __import__("optimum.exporters.onnx", fromlist=["main_export"]).main_export
    monkeypatch.setattr(
        "optimum.exporters.onnx.main_export",
        lambda *a, **k: calls.append(k["no_post_process"]) or real(*a, **k),
    )
    out = tmp_path / "onnx"
    export_onnx(tiny_model_dir, out, ["fp32", "int4"], OnnxExportConfig())
    assert calls == [True]
    for quant in ("fp32", "int4"):
        assert (out / quant / "model.onnx_data").is_file(), quant
    ids = tiny_tokenizer(PROMPTS[1], add_special_tokens=False)["input_ids"]
    kl, _ = kl_top1(torch_logprobs(tiny_model_dir, ids), log_softmax(OnnxDecoder(out / "fp32").logits(ids)))
    assert kl <= 1e-5


def test_a_decoder_exported_without_its_cache_is_refused_not_run_blind(tiny_model_dir, tmp_path):
    """optimum's task text-generation leaves out past_key_values: each step after the prompt would
    see one token and nothing before it, and chat printed what that gave with exit 0."""
    import warnings

    from click.testing import CliRunner
    from optimum.exporters.onnx import main_export

    from edgetune.cli import main

    out = tmp_path / "nocache"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main_export(
            str(tiny_model_dir),
            str(out),
            task="text-generation",
            do_validation=False,
            library_name="transformers",
        )
    with pytest.raises(InputError, match="without a key/value cache"):
        OnnxDecoder(out)
    result = CliRunner().invoke(main, ["chat", str(out)], input="hello\n")
    assert result.exit_code == 2 and "without a key/value cache" in result.output, result.output


@pytest.mark.parametrize(
    "arch, overrides",
    [
        ("Qwen3ForCausalLM", {"head_dim": 32}),
        ("Phi3ForCausalLM", {}),
        ("LlamaForCausalLM", {"head_dim": 32}),
        ("LlamaForCausalLM", {}),  # head_dim = hidden_size / heads: optimum generates
        ("Qwen3ForCausalLM", {}),
    ],
)
def test_the_folders_optimum_cannot_generate_with_are_the_ones_export_names(
    arch, overrides, tmp_path, tiny_tokenizer
):
    """optimum-onnx 0.1.0 starts generation with a cache shaped from hidden_size / heads (Qwen3's
    head_dim differs) and, for Phi-3, from every attention head (Phi-4-mini groups them): the
    export says which folders it fails on, and only those."""
    import json

    import torch
    from conftest import build_tiny_model
    from optimum.onnxruntime import ORTModelForCausalLM

    from edgetune.export.onnx_export import optimum_misreads

    model = build_tiny_model(tmp_path, tiny_tokenizer, arch, **overrides)
    export_onnx(model, tmp_path / "onnx", ["fp32"], OnnxExportConfig())
    folder = tmp_path / "onnx" / "fp32"
    ids = tiny_tokenizer(PROMPTS[0], add_special_tokens=False)["input_ids"]
    named = optimum_misreads(json.loads((folder / "config.json").read_text()))
    try:
        ORTModelForCausalLM.from_pretrained(folder).generate(
            torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long), max_new_tokens=2
        )
        failed = False
    except Exception:
        failed = True
    assert failed == (named is not None), (arch, named)
    ours = greedy(OnnxRunner(Target("fp32", "onnx", "fp32", "onnxruntime", "cpu", folder)), ids, [], 4)
    assert len(ours) == 4  # onnxruntime itself runs every one of them


def test_phi3s_fused_qkv_keeps_the_8_bits_its_v_projection_is_given(tmp_path, tiny_tokenizer):
    """int4 keeps v_proj at 8 bits; Phi-3 fuses v into qkv_proj, which quietly went to 4 bits."""
    import onnx
    from conftest import build_tiny_model

    model = build_tiny_model(tmp_path, tiny_tokenizer, "Phi3ForCausalLM")
    export_onnx(model, tmp_path / "onnx", ["int4"], OnnxExportConfig())
    graph = onnx.load(str(tmp_path / "onnx" / "int4" / "model.onnx")).graph
    bits = {
        n.name: next(a.i for a in n.attribute if a.name == "bits")
        for n in graph.node
        if n.op_type == "MatMulNBits"
    }
    qkv = [b for name, b in bits.items() if "qkv_proj" in name]
    gate_up = [b for name, b in bits.items() if "gate_up_proj" in name]
    assert qkv and set(qkv) == {8} and set(gate_up) == {4}


def test_a_longrope_graph_is_held_to_its_original_context():
    """The traced graph holds only longrope's short factors: past the original context its logits
    left torch's (a tiny Phi-3, 64 original positions: equal to 64, 0.018 apart from 65), so chat
    keeps to it, as it does with a GGUF (bench measures the file as it is, past it too)."""
    from edgetune.export.onnx_runtime import OnnxDecoder

    phi = {"max_position_embeddings": 131072, "original_max_position_embeddings": 4096}
    assert OnnxDecoder.context_of({**phi, "rope_scaling": {"type": "longrope"}}) == 4096
    assert OnnxDecoder.context_of({**phi, "rope_scaling": {"rope_type": "longrope"}}) == 4096
    assert OnnxDecoder.context_of({**phi, "rope_scaling": {"rope_type": "llama3"}}) == 131072
    assert OnnxDecoder.context_of({"max_position_embeddings": 2048, "rope_scaling": None}) == 2048


def test_external_data_inside_a_subgraph_is_confined_too(tmp_path):
    """An If branch's tensor is loaded by onnxruntime as any other: its external data path is
    checked as the main graph's are."""
    import onnx
    from onnx import TensorProto, helper

    from edgetune.export.onnx_graph import external_data_files

    (tmp_path / "secret.bin").write_bytes(b"\0" * 64)
    branch_tensor = helper.make_tensor("w", TensorProto.FLOAT, [4], [0.0] * 4)
    branch_tensor.ClearField("float_data")
    branch_tensor.data_location = TensorProto.EXTERNAL
    branch_tensor.external_data.add(key="location", value="../secret.bin")
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    branch = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "b", [], [out], [branch_tensor])
    cond = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    node = helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)
    model = helper.make_model(helper.make_graph([node], "g", [cond], [out]))
    (tmp_path / "m").mkdir()
    onnx.save_model(model, str(tmp_path / "m" / "model.onnx"))
    with pytest.raises(InputError, match=r"tensor 'w' stores its data at '../secret.bin'"):
        external_data_files(tmp_path / "m" / "model.onnx")


def test_a_tied_head_is_stored_once_in_fp32_and_fp16_whatever_the_embedding_class(
    tmp_path, tiny_gemma3_dir, tiny_model_dir, tiny_tokenizer
):
    """optimum shares a tied Llama head with its embedding, but not Gemma 3's (a scaled embedding
    class): its fp32 and fp16 files held the table twice. Sharing it changes no logit."""
    import onnx

    ids = tiny_tokenizer(PROMPTS[1], add_special_tokens=False)["input_ids"]
    for name, model_dir in (("gemma3", tiny_gemma3_dir), ("llama", tiny_model_dir)):
        out = tmp_path / name
        export_onnx(model_dir, out, ["fp32", "fp16"], OnnxExportConfig())
        for quant in ("fp32", "fp16"):
            graph = onnx.load(str(out / quant / "model.onnx")).graph
            vocab = [t for t in graph.initializer if len(t.dims) == 2 and len(tiny_tokenizer) in t.dims]
            assert len(vocab) == 1, (name, quant, [tuple(t.dims) for t in vocab])
        kl, top1 = kl_top1(torch_logprobs(model_dir, ids), log_softmax(OnnxDecoder(out / "fp32").logits(ids)))
        assert kl <= 1e-5 and top1 == 1.0, name


def test_int4_8bit_layers_that_name_no_layer_are_refused(exported):
    """`int4_8bit_layers: [v_projj]` (or `[1, 2]`) kept no layer at 8 bits in the int4 file, and no
    one was told."""
    import onnx

    from edgetune.export.onnx_quantize import _matmul_names, refuse_unmatched_layers

    _, out, _ = exported
    names = _matmul_names(onnx.load(str(out / "fp32" / "model.onnx"), load_external_data=False))
    refuse_unmatched_layers(["v_proj", "down_proj", "lm_head", "o_proj"], names)
    # the defaults keep what they match: another architecture has no down_proj
    refuse_unmatched_layers(["v_proj", "down_proj", "lm_head"], [n for n in names if "down_proj" not in n])
    with pytest.raises(
        InputError, match="int4_8bit_layers: v_projj, mlp_out names no layer of this model"
    ) as bad:
        refuse_unmatched_layers(["v_projj", "mlp_out", "down_proj", "1"], names)  # "1": layers.1, a part
    assert "k_proj" in str(bad.value) and "lm_head" in str(bad.value)


def test_an_onnx_folder_whose_generation_settings_or_plain_tokenizer_differ_from_the_model_fails(
    tmp_path, tiny_model_dir, tiny_tokenizer
):
    """The parity loop decodes by argmax and stops at the union of every EOS it finds, so a folder
    whose generation_config.json said eos_token_id 0, or sampled at temperature 1.5, whose
    config.json's or tokenizer's EOS was another token, or whose tokenizer.json added a BOS the model never saw
    to a plain tokenizer(text) call, passed: optimum's generate on it would not stop at <|im_end|>.
    The model's own sampling settings, which the export copies, still pass."""
    import shutil

    from edgetune.data.render import Renderer
    from edgetune.data.rows import Example
    from edgetune.export.parity import check_onnx

    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "model")
    eos = tiny_tokenizer.eos_token_id
    own = {
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.9,
        "repetition_penalty": 10.0,  # genai applies it without sampling too: parity's run must not
        "eos_token_id": [eos, 1],
        "pad_token_id": eos,
    }
    (model_dir / "generation_config.json").write_text(json.dumps(own))
    (folder,) = [
        a.path for a in export_onnx(model_dir, tmp_path / "onnx", ["fp32"], OnnxExportConfig()).artifacts
    ]
    ex = Example("messages", messages=(("user", "router lost uplink"), ("assistant", "ok")), source="t:1")

    notes = []

    def failures() -> str:
        (row,) = check_onnx(model_dir, [("fp32", folder)], Renderer(tiny_tokenizer), [ex], 8)
        notes.append(row.notes)
        return "; ".join(row.failures)

    assert failures() == ""
    genai = json.loads((folder / "genai_config.json").read_text())  # the model's own settings and stops
    assert {k: genai["search"][k] for k in ("do_sample", "temperature", "top_p", "repetition_penalty")} == {
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.9,
        "repetition_penalty": 10.0,
    }
    assert genai["model"]["eos_token_id"] == sorted({eos, 1}) and genai["model"]["pad_token_id"] == eos
    sabotage = {
        "genai_config.json": lambda d: d["model"]["decoder"]["inputs"].update(
            past_key_names="past_key_values.%d.value", past_value_names="past_key_values.%d.key"
        ),
        "generation_config.json": lambda d: d.update(eos_token_id=0, temperature=1.5),
        "config.json": lambda d: d.update(eos_token_id=0),
        "tokenizer_config.json": lambda d: d.update(eos_token="<|endoftext|>"),
        "tokenizer.json": lambda d: d.update(
            post_processor={
                "type": "TemplateProcessing",
                "single": [
                    {"SpecialToken": {"id": "<s>", "type_id": 0}},
                    {"Sequence": {"id": "A", "type_id": 0}},
                ],
                "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {"<s>": {"id": "<s>", "ids": [3], "tokens": ["<s>"]}},
            }
        ),
    }
    said = {}
    for name, change in sabotage.items():
        original = (folder / name).read_text()
        settings = json.loads(original)
        change(settings)
        (folder / name).write_text(json.dumps(settings))
        said[name] = failures()
        (folder / name).write_text(original)
    assert said["generation_config.json"] == (
        f"generation_config.json: eos_token_id 0 where the merged model's is [{eos}, 1], temperature 1.5 "
        "where the merged model's is 0.7 (optimum's generate would stop or sample otherwise)"
    )
    assert said["genai_config.json"] == (
        "onnxruntime-genai answers as onnxruntime does on only 0% of the prompts (its genai_config.json "
        "misreads the graph?)"
    )
    assert said["config.json"] == f"config.json: eos_token_id 0 where the merged model's is {eos}"
    assert notes == [[]] * len(notes)
    # named templates as a list, as transformers wrote them before chat_template.jinja: onnxruntime-genai
    # cannot load that tokenizer, which is said, not failed (an app can feed it token ids)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = [{"name": "default", "template": config["chat_template"]}]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    assert failures() == ""
    assert notes[-1] == [
        "onnxruntime-genai cannot load the folder's tokenizer ([json.exception.type_error.302] type must be "
        "string, but is array): feed it ids"
    ]
    assert said["tokenizer_config.json"] == (
        "the folder's tokenizer: eos_token '<|endoftext|>' where the merged model's is '<|im_end|>'"
    )
    assert said["tokenizer.json"] == (
        "the folder's tokenizer called plainly (tokenizer(text), which adds special tokens) gives other "
        "ids than the merged model's: the file adds '<s>' (id 3) before the prompt, the model does not"
    )
