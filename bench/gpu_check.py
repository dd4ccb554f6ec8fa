#!/usr/bin/env python3
"""The prepared GPU check (run by bench/gpu_check.sh), and its CPU dry run for CI.

    python bench/gpu_check.py --out DIR            # on a CUDA machine: about 6-8 minutes on one H200
    python bench/gpu_check.py --dry-run --out DIR  # same steps on the CPU with a tiny model: the plumbing

1. QLoRA against bf16 LoRA on the same model, data, batch and steps: peak VRAM and tokens/s, each in
   its own process. The model has TinyLlama-1.1B's shape with random weights (memory and speed do not
   depend on the values; no download is possible on the device machine).
   Goal: QLoRA peak VRAM <= 0.55x LoRA's at >= 0.75x its throughput.
2. The shipped accelerate configs (DDP QLoRA, FSDP LoRA, FSDP QLoRA; two processes, so two GPUs) on a
   tiny model, each against a plain run: exit status, final loss, adapter shapes.
3. The demo pipeline (`edgetune run recipes/demo.yaml`) with CUDA bench targets beside the CPU ones
   (runtimes without CUDA support here are listed as skipped, with the reason).
4. DIR/report.json and DIR/report.md, rewritten after every step (a cut-short run keeps its results).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO_DATA = ROOT / "edgetune" / "datasets" / "device_logs.jsonl"
TINYLLAMA_SHAPE = dict(
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=22,
    num_attention_heads=32,
    num_key_value_heads=4,
)
TINY_SHAPE = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)
GOALS = {"vram_ratio_max": 0.55, "throughput_ratio_min": 0.75}


def edgetune(*args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "edgetune", *args]
    print("$ edgetune " + " ".join(args), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if proc.returncode not in (0, 3):
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"gpu_check: `edgetune {args[0]}` failed with exit code {proc.returncode}")
    return proc


def random_model(out: Path, shape: dict, dtype: str) -> Path:
    """A Llama with `shape` and random weights, with the built-in SmolLM2 tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from edgetune.models import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model("smollm2-135m-instruct", quiet=True))
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
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def train_recipe(work: Path, model_dir: Path, steps: int) -> Path:
    recipe = work / "memory.yaml"
    recipe.write_text(
        "name: gpu-check\n"
        f"model:\n  base: {model_dir}\n"
        f"data:\n  train: {DEMO_DATA}\n  max_seq_len: 512\n"
        f"train:\n  lr: 1.0e-4\n  max_steps: {steps}\n  batch_size: 8\n  eval_steps: {10 * steps}\n"
        f"  save_steps: {10 * steps}\n  warmup_ratio: 0.0\n  packing: false\n"
    )
    return recipe


def compare_lora_qlora(work: Path, model_dir: Path, steps: int, dry: bool) -> dict:
    recipe = train_recipe(work, model_dir, steps)
    rows = {}
    for method in ("lora", "qlora"):
        run = work / f"run-{method}"
        precision = "fp32" if dry else "bf16"
        # the same settings for both (QLoRA would otherwise turn gradient checkpointing on by itself,
        # and the ratios would measure recomputation, not 4-bit weights)
        edgetune("tune", str(recipe), "--run-dir", str(run), "--set", f"train.method={method}",
                 "--set", f"train.precision={precision}", "--set", "train.gradient_checkpointing=false")  # fmt: skip
        tune = json.loads((run / "manifest.json").read_text())["stages"]["tune"]
        rows[method] = {
            "tokens_per_s": tune.get("tokens_per_s"),
            "peak_vram_bytes": tune.get("peak_vram_bytes"),
            "wall_s": tune.get("wall_s"),
            "gradient_checkpointing": tune.get("gradient_checkpointing"),
        }
    lora, qlora = rows["lora"], rows["qlora"]
    result = {"steps": steps, "batch_size": 8, "methods": rows}
    if lora["tokens_per_s"] and qlora["tokens_per_s"]:
        result["throughput_ratio"] = round(qlora["tokens_per_s"] / lora["tokens_per_s"], 3)
    if lora["peak_vram_bytes"] and qlora["peak_vram_bytes"]:
        result["vram_ratio"] = round(qlora["peak_vram_bytes"] / lora["peak_vram_bytes"], 3)
        result["meets_goal"] = (
            result["vram_ratio"] <= GOALS["vram_ratio_max"]
            and result.get("throughput_ratio", 0) >= GOALS["throughput_ratio_min"]
        )
    return result


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


def pipeline(work: Path, model_dir: Path | None, dry: bool) -> dict:
    run = work / "demo"
    args = ["run", "recipes/demo.yaml", "--run-dir", str(run), "--no-gate",
            "--set", "bench.max_examples=20", "--set", "bench.forgetting=false",
            "--set", "bench.adapter_target=false", "--set", f"bench.devices={'[cpu]' if dry else '[cpu,cuda]'}"]  # fmt: skip
    if dry:  # the plumbing only: a tiny model, a few steps, one file per format
        args += ["--set", f"model.base={model_dir}", "--set", "train.max_steps=2", "--set", "train.eval_steps=2",
                 "--set", "train.save_steps=2", "--set", "export.gguf.quants=[q8_0]",
                 "--set", "export.onnx.quants=[fp32]", "--set", "bench.max_examples=3",
                 "--set", "bench.max_new_tokens=4", "--set", "bench.latency_decode_tokens=4",
                 "--set", "bench.latency_repeats=1", "--set", "export.parity_examples=2",
                 "--set", "data.max_seq_len=512"]  # fmt: skip
    edgetune(*args, timeout=1500)
    report = json.loads((run / "bench" / "report.json").read_text())
    return {"report": report, "report_md": (run / "bench" / "report.md").read_text()}


def markdown(result: dict) -> str:
    m = result["memory"]
    lines = [f"# GPU check ({result['device']}, {result['date']})", "", "## QLoRA against bf16 LoRA", ""]
    lines.append(
        f"Same model (TinyLlama-1.1B shape, random weights), batch 8, {m['steps']} steps, demo data."
    )
    lines += ["", "| method | tokens/s | peak VRAM |", "|---|---|---|"]
    for name, row in m["methods"].items():
        vram = row["peak_vram_bytes"]
        lines.append(
            f"| {name} | {row['tokens_per_s']} | {vram / 2**30:.2f} GiB |"
            if vram
            else f"| {name} | {row['tokens_per_s']} | - |"
        )
    if "vram_ratio" in m:
        lines.append(
            f"\nQLoRA / LoRA: VRAM {m['vram_ratio']:.2f}x (goal <= {GOALS['vram_ratio_max']}), "
            f"throughput {m.get('throughput_ratio', 0):.2f}x (goal >= {GOALS['throughput_ratio_min']}): "
            f"{'met' if m.get('meets_goal') else 'NOT met'}"
        )
    if "sharded" in result:
        lines += ["", "## Launcher configs (examples/accelerate)", ""]
        lines += ["| config | method | processes | exit | final loss | plain run | adapter shapes |"]
        lines += ["|---|---|---|---|---|---|---|"]
        for r in result["sharded"]:
            shapes = {True: "same", False: "DIFFER"}.get(r.get("same_adapter_shapes"), "-")
            lines.append(
                f"| {r['config']} | {r['method']} | {r['processes']} | {r['exit']} | "
                f"{r.get('final_loss', '-')} | {r.get('plain_final_loss', '-')} | {shapes} |"
            )
        lines += [
            f"\n{r['config']} failed:\n```\n" + "\n".join(r["error"]) + "\n```"
            for r in result["sharded"]
            if "error" in r
        ]
        lines += [f"- {r['config']} not run: {r['skipped']}" for r in result["sharded"] if "skipped" in r]
    if "pipeline" in result:
        skipped = result["pipeline"]["report"].get("skipped_targets", [])
        lines += ["", "## Demo pipeline with CUDA targets", "", result["pipeline"]["report_md"]]
        lines += [f"- skipped {s['name']} on {s['device']}: {s['reason']}" for s in skipped]
    return "\n".join(lines) + "\n"


def write_report(out: Path, result: dict) -> None:
    """After every step, so a check cut short by its time limit still leaves what it measured."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "report.md").write_text(markdown(result))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny model: checks the plumbing")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "gpu_check")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; use --dry-run on a CPU", file=sys.stderr)
        return 2
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shape, dtype = (TINY_SHAPE, "float32") if args.dry_run else (TINYLLAMA_SHAPE, "bfloat16")
        model_dir = random_model(work / "model", shape, dtype)
        result = {
            "device": "cpu (dry run)" if args.dry_run else torch.cuda.get_device_name(0),
            "date": time.strftime("%Y-%m-%d"),
            "memory": compare_lora_qlora(work, model_dir, 2 if args.dry_run else args.steps, args.dry_run),
        }
        write_report(args.out, result)
        result["sharded"] = sharded_launch(work, model_dir, args.dry_run)
        write_report(args.out, result)
        result["pipeline"] = pipeline(work, model_dir, args.dry_run)
    result["wall_s"] = round(time.time() - started, 1)
    write_report(args.out, result)
    print(markdown(result))
    print(f"gpu_check: {result['wall_s']:.0f} s; report in {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
