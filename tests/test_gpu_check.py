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
    assert [m["gradient_checkpointing"] for m in report["memory"]["methods"].values()] == [False, False]
    assert report["memory"]["throughput_ratio"] > 0
    (ddp,) = report["sharded"]
    assert ddp["exit"] == 0 and ddp["world_size"] == 2 and ddp["same_adapter_shapes"], ddp
    assert ddp["final_loss"] == pytest.approx(ddp["plain_final_loss"], rel=0.05)
    names = [t["name"] for t in report["pipeline"]["report"]["targets"]]
    assert names == ["torch/merged", "onnx/fp32", "gguf/q8_0"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "QLoRA against bf16 LoRA" in md and "| gguf/q8_0 | cpu |" in md
