"""bench/gpu_check.sh --dry-run: the prepared GPU check's steps, on the CPU with a tiny model."""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": str(Path(os.sys.executable))}
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run"],
        capture_output=True,
        text=True,
        env=env,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(report["memory"]["methods"]) == {"lora", "qlora"}
    assert [m["gradient_checkpointing"] for m in report["memory"]["methods"].values()] == [True, True]
    assert all(m["steady_tokens_per_s"] > 0 for m in report["memory"]["methods"].values())
    assert report["memory"]["throughput_ratio"] > 0
    assert report["memory"]["throughput_from"] == "steady_tokens_per_s"
    # every command's output lands beside the report, each under the command that printed it
    log = (tmp_path / "out" / "edgetune.log").read_text()
    assert "$ edgetune run recipes/demo.yaml" in log and "--until export" in log and "ran bench" in log
    (ddp,) = report["sharded"]
    assert ddp["exit"] == 0 and ddp["world_size"] == 2 and ddp["same_adapter_shapes"], ddp
    assert ddp["final_loss"] == pytest.approx(ddp["plain_final_loss"], rel=0.05)
    names = [t["name"] for t in report["pipeline"]["report"]["targets"]]
    assert names == ["torch/merged", "onnx/fp32", "gguf/q8_0"]
    assert report["preflight"] == {} and report["versions"]["torch"]
    assert set(report["step_wall_s"]) == {"memory", "sharded", "pipeline"}
    md = (tmp_path / "out" / "report.md").read_text()
    assert "QLoRA against bf16 LoRA" in md and "| gguf/q8_0 | cpu |" in md
    # the check turns the prompting baselines off: the bench report has no empty section for them
    assert "Fine-tuning against prompting" not in report["pipeline"]["report_md"]


def load_bench_script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_preflight_names_what_this_python_lacks():
    gpu_check = load_bench_script("gpu_check")
    assert gpu_check.preflight() == {}  # make test installed everything pyproject.toml asks for
    problems = gpu_check.preflight(["click>=999", "no-such-package-edgetune>=1"])
    assert "edgetune needs >=999" in problems["click"]
    assert problems["no-such-package-edgetune"] == "not installed"


def test_cuda_rows_sit_beside_the_same_target_on_the_cpu():
    gpu_report = load_bench_script("gpu_report")

    def t(name, device, decode, vram=None):
        return {"name": name, "device": device, "decode_tok_s": decode, "ttft_ms": 5.0, "peak_vram_mb": vram}

    report = {"targets": [t("torch/merged", "cpu", 30.0), t("gguf/q8_0", "cpu", 80.0),
                          t("torch/merged", "cuda", 150.0, 900.0)]}  # fmt: skip
    (row,) = gpu_report.latency_rows(report)
    assert row["name"] == "torch/merged" and row["decode_ratio"] == 5.0 and row["cuda_peak_vram_mb"] == 900.0
    md = gpu_report.markdown(
        {
            "device": "H200",
            "date": "d",
            "versions": {"torch": "2.11.0"},
            "preflight": {"gguf": "not installed"},
            "step_wall_s": {"memory": 61.0},
            "pipeline_not_run": "packages missing here: gguf (not installed)",
            "pipeline": {"report": report, "report_md": "(bench report)"},
        }  # fmt: skip
    )
    assert "| torch/merged | 5.0 ms | 150.0 tok/s | 30.0 tok/s | 5.00x | 900 MB |" in md
    # a check cut short before its first step, or with a failed step, still writes a readable report
    early = gpu_report.markdown({"device": "H200", "date": "d", "preflight": {"gguf": "not installed"},
                                "failed": {"memory": "StepFailed: `edgetune tune` exited 1: CUDA error"}})  # fmt: skip
    assert "gguf: not installed" in early and "Step memory FAILED: StepFailed" in early
