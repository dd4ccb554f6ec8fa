"""`edgetune export --to onnx`: the merged model -> one directory per variant (fp32, fp16, int8, int4).

optimum-onnx traces the KV-cache decoder (task text-generation-with-past) once, in fp32; the other
variants are rewritten from that graph. Each variant directory holds model.onnx (+ model.onnx_data
when large), config.json, generation_config.json, genai_config.json and the tokenizer with its chat
template, so that `ORTModelForCausalLM.from_pretrained(dir)`, onnxruntime-genai's `og.Model(dir)`
and `edgetune chat dir` all work on it alone.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgetune.errors import ModelError, is_disk_full, writing
from edgetune.export.onnx_graph import (
    EXTERNAL_DATA_NAME,
    PROTOBUF_LIMIT,
    add_logits_from_input,
    load_model,
    save_model,
    share_tied_head,
)
from edgetune.export.onnx_runtime import MODEL_FILE, model_files
from edgetune.export.settings import OnnxExportConfig
from edgetune.rundir import atomic_dir, sha256_file

TASK = "text-generation-with-past"
INFO_FILE = "edgetune-onnx.json"


@dataclass
class OnnxArtifact:
    quant: str
    path: Path  # the variant's directory
    size_bytes: int
    sha256: str  # of model.onnx (the graph; external data is hashed into `files`)
    files: dict[str, str] = field(default_factory=dict)


@dataclass
class OnnxExport:
    artifacts: list[OnnxArtifact]
    wall_s: float = 0.0


# optimum-onnx 0.1.0's ORTModelForCausalLM sizes the empty key/value cache it starts generation
# with from config.json: head_dim only for these model types (hidden_size // heads for the rest),
# and the KV head count only for the second set (every attention head for the rest)
OPTIMUM_READS_HEAD_DIM = {"gemma", "gemma3_text", "gpt_oss", "nemotron"}
OPTIMUM_READS_KV_HEADS = {
    "arcee",
    "deepseek_v3",
    "cohere",
    "gemma",
    "gemma3_text",
    "glm",
    "granite",
    "gpt_oss",
}
OPTIMUM_READS_KV_HEADS |= {
    "helium",
    "mistral",
    "llama",
    "nemotron",
    "qwen2",
    "qwen3",
    "qwen3_moe",
    "smollm3",
    "stablelm",
}


def optimum_misreads(config: dict) -> str | None:
    """Why optimum's ORTModelForCausalLM cannot generate with this model's ONNX folder (it starts
    with a cache of the wrong shape: Qwen3's head_dim 128 beside hidden_size/heads 64, Phi-4-mini's
    8 KV heads of 24); None where it can. onnxruntime itself, and edgetune, run the folder fine."""
    kind, heads = config.get("model_type"), config.get("num_attention_heads")
    if not heads or kind == "gemma3":
        return None
    head_dim, guessed = config.get("head_dim"), config.get("hidden_size", 0) // heads
    if head_dim and head_dim != guessed and kind not in OPTIMUM_READS_HEAD_DIM:
        return f"head_dim {head_dim}, which it takes to be hidden_size / num_attention_heads = {guessed}"
    kv = config.get("num_key_value_heads")
    if kv and kv != heads and kind not in OPTIMUM_READS_KV_HEADS:
        return f"{kv} key/value heads, which it takes to be the {heads} attention heads"
    return None


def fp32_bytes(model_dir: Path) -> int:
    """The model's weights as fp32, from the safetensors headers (nothing is loaded); a folder of
    other weight files counts by their size on disk."""
    from safetensors import safe_open

    total = 0
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="np") as f:
            for name in f.keys():
                total += 4 * math.prod(f.get_slice(name).get_shape())
    return total or sum(p.stat().st_size for p in model_dir.glob("*.bin"))


def trace_fp32(model_dir: Path, out: Path) -> None:
    """optimum's exporter, quiet: its tracer warnings are about Python branches it cannot record,
    which the parity check then verifies numerically rather than trusting."""
    from optimum.exporters.onnx import main_export
    from optimum.utils import logging as optimum_logging
    from transformers.utils import logging as hf_logging

    verbosity, optimum_verbosity = hf_logging.get_verbosity(), optimum_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    optimum_logging.set_verbosity_error()  # e.g. its note on the tied embedding we untie ourselves
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            main_export(
                str(model_dir),
                str(out),
                task=TASK,
                device="cpu",
                do_validation=False,  # its max-diff check is not ours: parity runs after export
                local_files_only=True,
                trust_remote_code=False,
                library_name="transformers",
                # its post-processing (tied weights shared) measures the whole graph in protobuf,
                # which fails past 2 GB; the variants untie the head anyway (onnx_graph)
                no_post_process=fp32_bytes(model_dir) > PROTOBUF_LIMIT,
            )
    except Exception as e:
        if is_disk_full(e):  # the disk's fault, not the model's: the caller names where it wrote
            raise
        raise ModelError(f"{model_dir}: optimum could not export it to ONNX ({type(e).__name__}: {e})") from e
    finally:
        hf_logging.set_verbosity(verbosity)
        optimum_logging.set_verbosity(optimum_verbosity)
    _tokenizer_config_for_every_runtime(out)


def _tokenizer_config_for_every_runtime(folder: Path) -> None:
    """The folder's tokenizer_config.json as runtimes other than this transformers read it:
    - it names a causal LM's inputs, as models.causal_inputs_only makes the ones edgetune saves (a
      merged model from before that still hands out token_type_ids, which generate() refuses);
    - it holds the chat template, which transformers saves in chat_template.jinja alone: the
      folder's other readers (transformers.js, TGI, onnxruntime-genai, older transformers) look for
      it here and found none. transformers reads the .jinja file first, so the two are one
      template. The default one only, as a string: onnxruntime-genai's tokenizer refuses the
      list form named templates take ("type must be string"), and transformers finds the named
      ones in additional_chat_templates/."""
    from edgetune.models import CAUSAL_INPUTS

    config = folder / "tokenizer_config.json"
    if not config.is_file():
        return
    settings = json.loads(config.read_text(encoding="utf-8"))
    before = dict(settings)
    if settings.get("tokenizer_class") == "PreTrainedTokenizerFast" and "model_input_names" not in settings:
        settings["model_input_names"] = list(CAUSAL_INPUTS)
    template = folder / "chat_template.jinja"
    if not isinstance(settings.get("chat_template"), str) and template.is_file():
        settings["chat_template"] = template.read_text(encoding="utf-8")
    if settings != before:
        config.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _variant(
    fp32: Path, quant: str, config: OnnxExportConfig, staging: Path, force_external: bool, stop: list[int]
) -> None:
    from edgetune.export.onnx_genai import write_genai_config
    from edgetune.export.onnx_quantize import int4_plan, int8_plan, quantize_nbits, to_fp16

    for item in fp32.iterdir():  # the tokenizer and configs, named chat templates' folder included
        if item.name not in (MODEL_FILE, EXTERNAL_DATA_NAME) and item.is_file():
            shutil.copy2(item, staging / item.name)
        elif item.is_dir():
            shutil.copytree(item, staging / item.name)
    model = load_model(fp32 / MODEL_FILE)
    add_logits_from_input(model)  # before quantising: the LM head's MatMul keeps its weight
    if quant == "int8":
        model = quantize_nbits(model, int8_plan(config.int8_block_size, config.int4_accuracy_level))
    elif quant == "int4":
        plan = int4_plan(
            config.int4_block_size,
            config.int4_accuracy_level,
            config.int4_8bit_layers,
            config.int4_embeddings,
        )
        model = quantize_nbits(model, plan)
    else:  # fp32, fp16: the quantisers above take the head apart from the embedding (their own bits)
        share_tied_head(model)
    if quant == "fp16":
        model = to_fp16(model)
    save_model(model, staging / MODEL_FILE, force_external=force_external)
    write_genai_config(staging, stop, model.graph)
    (staging / INFO_FILE).write_text(
        json.dumps({"quant": quant, "config": asdict(config), "task": TASK}, indent=2) + "\n"
    )


def refuse_unrunnable(model_dir: Path) -> None:
    """A model whose config.json does not give the attention shape (GPT-2's n_head) is refused
    before minutes of tracing: edgetune's runner sizes the key/value cache from it."""
    from edgetune.export.onnx_runtime import OnnxDecoder

    config = json.loads((model_dir / "config.json").read_text())
    try:
        OnnxDecoder._kv_dims({**config, "num_key_value_heads": None, "head_dim": None})
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        raise ModelError(
            f"{model_dir / 'config.json'}: model_type {config.get('model_type')!r} names no num_attention_heads "
            "and hidden_size, which edgetune's ONNX runner sizes the key/value cache from: its ONNX "
            "export does not support this architecture"
        ) from None


def export_onnx(
    model_dir: Path,
    out_dir: Path,
    quants: list[str],
    config: OnnxExportConfig,
    console=None,
    force_external: bool = False,
) -> OnnxExport:
    """Trace once, then write each requested variant atomically to out_dir/<quant>/."""
    started = time.time()
    refuse_unrunnable(model_dir)
    wanted = [q.lower() for q in quants]
    out_dir.mkdir(parents=True, exist_ok=True)
    status = console.status if console is not None else (lambda _: contextlib.nullcontext())
    artifacts = []
    trace_dir = Path(tempfile.mkdtemp(prefix=".onnx-trace.", suffix=".tmp", dir=out_dir))
    try:
        with writing(out_dir):
            with status("onnx: tracing the fp32 decoder with optimum (text-generation-with-past)"):
                trace_fp32(model_dir, trace_dir)
            stop = _stop_ids(trace_dir)
            for quant in wanted:
                with status(f"onnx: writing {quant}"), atomic_dir(out_dir / quant) as staging:
                    _variant(trace_dir, quant, config, staging, force_external, stop)
                artifacts.append(_artifact(quant, out_dir / quant))
                if console is not None:
                    console.print(f"onnx: {quant} written")
    finally:
        shutil.rmtree(trace_dir, ignore_errors=True)
    return OnnxExport(artifacts, round(time.time() - started, 1))


def _stop_ids(folder: Path) -> list[int]:
    """Where a reply ends, as the parity check stops (its EOS ids and the template's turn end)."""
    from edgetune.data.render import stop_ids
    from edgetune.models import ResolvedModel, load_tokenizer

    return stop_ids(folder, load_tokenizer(ResolvedModel(str(folder), folder, "local")))


def _artifact(quant: str, directory: Path) -> OnnxArtifact:
    """The variant's size is its weights'; `files` lists every file a loader needs (the tokenizer,
    configs and templates too), so a run can tell a damaged folder from a whole one."""
    paths = model_files(directory)
    files = {p.name: sha256_file(p) for p in paths}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.name not in files:
            files[str(path.relative_to(directory))] = sha256_file(path)
    return OnnxArtifact(quant, directory, sum(p.stat().st_size for p in paths), files[MODEL_FILE], files)
