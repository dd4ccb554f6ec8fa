"""What bench measures in a run: the merged model (the reference), the base + adapter, every ONNX
variant and GGUF file exported, on each device asked for and able to run them."""

from __future__ import annotations

from pathlib import Path

from edgetune.bench.runners import Target
from edgetune.config import Recipe
from edgetune.errors import InputError, ModelError
from edgetune.export.layout import gguf_files, gguf_quant, onnx_dirs


def cuda_runtimes() -> dict[str, str | None]:
    """Which runtimes can run on CUDA here: None when one can, else why not."""
    import onnxruntime as ort

    try:
        import llama_cpp

        gguf = None if llama_cpp.llama_supports_gpu_offload() else "llama-cpp-python is a CPU-only build"
    except ImportError:
        gguf = "llama-cpp-python is not installed"
    onnx = (
        _ort_cuda_problem()
        if "CUDAExecutionProvider" in ort.get_available_providers()
        else ("onnxruntime has no CUDA provider")
    )
    return {"torch": None, "onnx": onnx, "gguf": gguf}


def _ort_cuda_problem() -> str | None:
    """onnxruntime lists its CUDA provider even when CUDA or cuDNN libraries are missing, then runs
    sessions on the CPU: start a one-node session to see where it really runs."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from edgetune.export.onnx_runtime import load_cuda_libraries

    load_cuda_libraries()

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(
            model.SerializeToString(),
            options,
            providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
        )
    except Exception as e:  # noqa: BLE001 - any failure means no CUDA here
        return f"onnxruntime's CUDA provider cannot start ({type(e).__name__})"
    if session.get_providers()[0] != "CUDAExecutionProvider":
        return "onnxruntime's CUDA provider did not start (CUDA/cuDNN libraries missing?)"
    return None


def discover_targets(
    run_dir: Path, devices: list[str], recipe: Recipe, skipped: list[dict] | None = None
) -> list[Target]:
    """torch/merged (the reference), torch/adapter, then every ONNX variant and GGUF file exported.
    CUDA targets whose runtime has no CUDA support here are left out and listed in `skipped`."""
    from edgetune.export.onnx_runtime import directory_size

    merged = run_dir / "merged"
    if not (merged / "config.json").is_file():
        if not (run_dir / "adapter").is_dir():  # the tune never finished: nothing to merge yet
            from edgetune.tune.resume import no_adapter_yet

            raise no_adapter_yet(run_dir)
        raise InputError(f"{run_dir}: no merged model; run `edgetune export` (or `edgetune merge`) first")
    targets = []
    for device in devices:
        size = sum(p.stat().st_size for p in merged.glob("*.safetensors"))
        targets.append(Target("torch/merged", "torch", "fp32", "torch", device, merged, size_bytes=size))
        if recipe.bench.adapter_target and (run_dir / "adapter").is_dir():
            from edgetune.models import resolve_model

            base = resolve_model(
                recipe.model.base, recipe.model.revision, quiet=True, allow_pickle=recipe.model.allow_pickle
            ).path
            # what this target loads: the base weights and the adapter beside them
            loaded = sum(
                p.stat().st_size
                for p in [*base.glob("*.safetensors"), *(run_dir / "adapter").glob("*.safetensors")]
            )
            targets.append(
                Target(
                    "torch/adapter", "torch", "adapter", "torch", device, base, run_dir / "adapter", loaded
                )
            )
        for d in onnx_dirs(run_dir / "export" / "onnx"):
            targets.append(
                Target(
                    f"onnx/{d.name}",
                    "onnx",
                    d.name,
                    "onnxruntime",
                    device,
                    d,
                    size_bytes=directory_size(d),
                )
            )
        # edgetune's own file (model-<quant>.gguf, in any case) is gguf/<quant>; another of that type
        # (mine-q8_0.gguf, or a second spelling) is named by its file, or the two would share a name
        # in the report and --compare. The exact spelling claims the name first.
        named: set[str] = set()
        for f in sorted(
            gguf_files(run_dir / "export" / "gguf"), key=lambda f: f.name != f"model-{gguf_quant(f)}.gguf"
        ):
            quant = gguf_quant(f)
            own = f.name.lower() == f"model-{quant}.gguf" and quant not in named
            name = quant if own else f.stem
            named.add(name)
            targets.append(
                Target(f"gguf/{name}", "gguf", quant, "llama.cpp", device, f, size_bytes=f.stat().st_size)
            )
    if "cuda" in devices:
        why = cuda_runtimes()
        for t in [t for t in targets if t.device == "cuda" and why[t.format]]:
            targets.remove(t)
            if skipped is not None:
                skipped.append({"name": t.name, "device": "cuda", "reason": why[t.format]})
    return targets


def check_devices(devices: list[str], given: str = "--device") -> None:
    """`given` names where the devices came from: the option, or the recipe's bench.devices."""
    unknown = sorted(set(devices) - {"cpu", "cuda"})
    if unknown:
        raise InputError(f"{given}: unknown {', '.join(unknown)}; supported: cpu, cuda")
    if "cuda" in devices:
        import torch

        if not torch.cuda.is_available():
            raise ModelError(
                f"{given}: cuda, but torch sees no CUDA device on this machine (see `edgetune doctor`)"
            )


def logits_width(path: Path, fmt: str) -> int | None:
    """How many tokens a GGUF file or ONNX folder computes logits over (None: not said in its
    header): what every KL and top-1 comparison against the merged model needs to be its own."""
    if fmt == "gguf":
        from gguf import GGUFReader

        tokens = GGUFReader(str(path)).fields.get("tokenizer.ggml.tokens")
        return len(tokens.data) if tokens is not None else None
    import onnx

    graph = onnx.load(str(path / "model.onnx"), load_external_data=False).graph
    logits = next((o for o in graph.output if o.name == "logits"), None)
    dims = logits.type.tensor_type.shape.dim if logits is not None else []
    return dims[-1].dim_value or None if dims else None


def refuse_another_vocabulary(files: list[tuple[str, Path]], reference: int) -> None:
    """Each exported file (format, path) read from its header, before bench measures anything."""
    for fmt, path in files:
        if (width := logits_width(path, fmt)) is not None:
            refuse_another_width(path, width, reference)


def refuse_another_width(path: Path, width: int, reference: int) -> None:
    """An exported file whose logits span another vocabulary than the merged model's is another
    model's file (copied in by mistake, or from before a retrain with added tokens): its KL is not
    defined, and comparing it had ended bench (after minutes of measuring) and export --check in
    numpy's "operands could not be broadcast"."""
    if width != reference:
        raise ModelError(
            f"{path}: computes logits over {width} tokens, the merged model over {reference}: a file "
            "of another model; export it again (or move it out of the export folder)"
        )
