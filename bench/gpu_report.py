"""The GPU check's report (bench/gpu_check.py): report.json and a readable report.md, with the QLoRA
against LoRA ratios and the CUDA latency rows set beside the same targets on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

GOALS = {"vram_ratio_max": 0.55, "throughput_ratio_min": 0.75}


def markdown(result: dict) -> str:
    lines = [f"# GPU check ({result['device']}, {result['date']})", ""]
    lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in result.get("versions", {}).items()))
    if result.get("preflight"):
        lines += ["", "Not available here:"] + [f"- {k}: {v}" for k, v in result["preflight"].items()]
    for name, why in result.get("failed", {}).items():
        lines += ["", f"Step {name} FAILED: {why}"]
    if result.get("step_wall_s"):
        lines += ["", "Step times: " + ", ".join(f"{k} {v:.0f} s" for k, v in result["step_wall_s"].items())]
    if "memory" in result:
        lines += _memory_md(result["memory"])
    if "profile" in result:
        lines += _profile_md(result["profile"])
    if "sharded" in result:
        lines += _sharded_md(result["sharded"])
    if "pipeline" in result:
        lines += _pipeline_md(result["pipeline"])
    elif "pipeline_not_run" in result:
        lines += ["", "## Demo pipeline with CUDA targets", "", f"Not run: {result['pipeline_not_run']}"]
    return "\n".join(lines) + "\n"


def _memory_md(m: dict) -> list[str]:
    lines = ["", "## QLoRA against bf16 LoRA", ""]
    shape = m.get("shape") or "tinyllama-1.1b"  # reports before --shape: TinyLlama's
    shape = {"llama-7b": "Llama-7B", "tinyllama-1.1b": "TinyLlama-1.1B"}.get(shape, shape)
    lines.append(
        f"Same model ({shape} shape, random weights), batch 8, {m['steps']} steps, demo data, "
        f"gradient checkpointing {'on' if m.get('gradient_checkpointing', False) else 'off'} for both."
    )
    lines += ["", "| method | tokens/s, steady | tokens/s, whole run | peak VRAM |", "|---|---|---|---|"]
    for name, row in m["methods"].items():
        vram = row["peak_vram_bytes"]
        lines.append(
            f"| {name} | {row.get('steady_tokens_per_s') or '-'} | {row['tokens_per_s']} | "
            f"{f'{vram / 2**30:.2f} GiB' if vram else '-'} |"
        )
    if "vram_ratio" in m:
        lines.append(
            f"\nQLoRA / LoRA: VRAM {m['vram_ratio']:.2f}x (goal <= {GOALS['vram_ratio_max']}), "
            f"throughput {m.get('throughput_ratio', 0):.2f}x (goal >= {GOALS['throughput_ratio_min']}; "
            f"{'steady' if m.get('throughput_from') == 'steady_tokens_per_s' else 'whole runs'}): "
            f"{'met' if m.get('meets_goal') else 'NOT met'}"
        )
    return lines


def _profile_md(rows: dict[str, dict]) -> list[str]:
    lines = ["", "## Where a training step's time goes (bench/step_profile.py)", ""]
    lines += [
        "| method | first step | steady step | in the step | between steps | tokens/step | device busy |"
    ]
    lines += ["|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        if "error" in r:
            why = r["error"][:200].replace("|", "/")
            lines.append(f"| {name} | not measured: {why} | | | | | |")
            continue
        busy = r.get("device_busy_ms_per_step")
        lines.append(
            f"| {name} | {r['first_step_s']:.3f} s | {r['steady_step_s']:.4f} s | {r['steady_in_step_s']:.4f} s | "
            f"{r['steady_between_steps_s']:.4f} s | {r.get('tokens_per_step') or '-'} | "
            f"{f'{busy:.1f} ms' if busy is not None else '-'} |"
        )
    for name, r in rows.items():
        for side, key in (("device", "top_by_device"), ("host", "top_by_host")):
            if not r.get(key):
                continue
            device = r.get("device") != "cpu"  # a CPU run has no device column
            lines += ["", f"{name}, top operators by {side} time (ms a step):", ""]
            lines += ["| operator | calls | host ms |" + (" device ms |" if device else "")]
            lines += ["|---|---|---|" + ("---|" if device else "")]
            lines += [
                f"| `{op['op'][:60]}` | {op['calls_per_step']} | {op['host_ms_per_step']} |"
                + (f" {op['device_ms_per_step']} |" if device else "")
                for op in r[key][:6]
            ]
    return lines


def _sharded_md(rows: list[dict]) -> list[str]:
    lines = ["", "## Launcher configs (examples/accelerate)", ""]
    lines += ["| config | method | processes | exit | final loss | plain run | adapter shapes |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for r in rows:
        shapes = {True: "same", False: "DIFFER"}.get(r.get("same_adapter_shapes"), "-")
        lines.append(
            f"| {r['config']} | {r['method']} | {r['processes']} | {r['exit']} | "
            f"{r.get('final_loss', '-')} | {r.get('plain_final_loss', '-')} | {shapes} |"
        )
    lines += [
        f"\n{r['config']} failed:\n```\n" + "\n".join(r["error"]) + "\n```" for r in rows if "error" in r
    ]
    lines += [f"- {r['config']} not run: {r['skipped']}" for r in rows if "skipped" in r]
    return lines


def latency_rows(report: dict) -> list[dict]:
    """Each target measured on both devices in this one run, side by side: CUDA against CPU."""
    by_device: dict[str, dict[str, dict]] = {}
    for t in report["targets"]:
        by_device.setdefault(t["name"], {})[t["device"]] = t
    rows = []
    for name, devices in by_device.items():
        cuda, cpu = devices.get("cuda"), devices.get("cpu")
        if cuda is None or cuda.get("decode_tok_s") is None:
            continue
        row = {"name": name, "cuda_ttft_ms": cuda.get("ttft_ms"), "cuda_decode_tok_s": cuda["decode_tok_s"],
               "cuda_peak_vram_mb": cuda.get("peak_vram_mb"), "cpu_decode_tok_s": None, "decode_ratio": None}  # fmt: skip
        if cpu and cpu.get("decode_tok_s"):
            row["cpu_decode_tok_s"] = cpu["decode_tok_s"]
            row["decode_ratio"] = round(cuda["decode_tok_s"] / cpu["decode_tok_s"], 2)
        rows.append(row)
    return rows


def _pipeline_md(pipeline_result: dict) -> list[str]:
    report = pipeline_result["report"]
    lines = ["", "## CUDA latency rows", ""]
    rows = latency_rows(report)
    if rows:
        lines += ["| target | TTFT (cuda) | decode (cuda) | decode (cpu) | cuda / cpu | peak VRAM |"]
        lines += ["|---|---|---|---|---|---|"]
        for r in rows:
            vram = f"{r['cuda_peak_vram_mb']:.0f} MB" if r["cuda_peak_vram_mb"] is not None else "-"
            ratio = f"{r['decode_ratio']:.2f}x" if r["decode_ratio"] is not None else "-"
            lines.append(
                f"| {r['name']} | {r['cuda_ttft_ms']} ms | {r['cuda_decode_tok_s']} tok/s | "
                f"{r['cpu_decode_tok_s'] or '-'} tok/s | {ratio} | {vram} |"
            )
    else:
        lines.append("No CUDA target was measured.")
    lines += [
        f"- skipped {s['name']} on {s['device']}: {s['reason']}" for s in report.get("skipped_targets", [])
    ]
    build = pipeline_result.get("llama_cuda_build") or {}
    if build:
        lines.append(f"- llama.cpp CUDA build on this machine: {build['status']}"
                     + (f" ({build['build_s']} s)" if "build_s" in build else ""))  # fmt: skip
        lines += [f"      {line}" for line in build.get("log", [])]
    lines += ["", "## Demo pipeline with CUDA targets", "", pipeline_result["report_md"]]
    return lines


def write_report(out: Path, result: dict) -> None:
    """After every step, so a check cut short by its time limit still leaves what it measured."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "report.md").write_text(markdown(result))
