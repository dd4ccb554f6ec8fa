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
    import re  # each output line with the seconds since its command started: where the time went

    assert re.search(r"^\[ *\d+\.\d s\] .*ran bench", log, re.MULTILINE), log[-2000:]
    (ddp,) = report["sharded"]
    assert ddp["exit"] == 0 and ddp["world_size"] == 2 and ddp["same_adapter_shapes"], ddp
    assert ddp["final_loss"] == pytest.approx(ddp["plain_final_loss"], rel=0.05)
    names = [t["name"] for t in report["pipeline"]["report"]["targets"]]
    assert names == ["torch/merged", "onnx/fp32", "gguf/q8_0"]
    assert report["preflight"] == {} and report["versions"]["torch"]
    assert set(report["step_wall_s"]) == {"memory", "profile", "sharded", "pipeline"}
    for method, row in report["profile"].items():  # where a step's time goes, both methods
        assert row["method"] == method and row["device"] == "cpu" and row["gradient_checkpointing"]
        assert row["steps"] == 6 and len(row["step_s"]) == 6 and row["tokens_per_step"] > 0
        assert 0 < row["steady_in_step_s"] <= row["steady_step_s"]
        assert any(op["op"] == "aten::mm" for op in row["top_by_host"]), row["top_by_host"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "QLoRA against bf16 LoRA" in md and "| gguf/q8_0 | cpu |" in md
    assert "Where a training step's time goes" in md and "top operators by host time" in md
    # the check turns the prompting baselines off: the bench report has no empty section for them
    assert "Fine-tuning against prompting" not in report["pipeline"]["report_md"]


def load_bench_script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("flags", [["--dry-run", "--only", "sharded"], ["--only", "sharded", "--dry-run"]])
def test_a_dry_run_keeps_its_other_flags_in_any_order(tmp_path, flags):
    """`--dry-run --only sharded` dropped --only (the whole check ran); `--only sharded --dry-run`
    took the GPU branch (its time limit, the report into bench/gpu_check, .gpu wheels installed)."""
    env = {**os.environ, "PYTHON": "echo", "OUT": str(tmp_path)}
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), *flags], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["bench/gpu_check.py", "--out", str(tmp_path), *flags]


def test_step_profile_counts_kernel_time_once_and_leaves_out_its_own_markers():
    from types import SimpleNamespace as Row

    step_profile = load_bench_script("step_profile")
    cpu, cuda = Row(name="CPU"), Row(name="CUDA")
    averages = [
        Row(key="aten::mm", count=6, self_cpu_time_total=3000, self_device_time_total=40000, device_type=cpu),
        Row(key="sm90_gemm", count=6, self_cpu_time_total=0, self_device_time_total=40000, device_type=cuda),
        Row(key="aten::item", count=3, self_cpu_time_total=90000, self_device_time_total=0, device_type=cpu),
        Row(
            key="ProfilerStep#7",
            count=1,
            self_cpu_time_total=99000,
            self_device_time_total=0,
            device_type=cpu,
        ),
    ]
    # the device-side copies of annotations span idle time too: not kernels, not operators
    averages.append(Row(key="ProfilerStep#7", count=1, self_cpu_time_total=0, self_device_time_total=900000,
                        device_type=cuda, is_user_annotation=True))  # fmt: skip
    averages.append(Row(key="cudaDeviceSynchronize", count=4, self_cpu_time_total=500000,
                        self_device_time_total=0, device_type=cpu))  # fmt: skip
    assert [e.key for e in averages if step_profile._is_kernel(e)] == ["sm90_gemm"]
    by_device = step_profile._top(averages, step_profile._device_us, steps=2)
    assert [r["op"] for r in by_device] == ["aten::mm"]  # the kernel row is not an operator
    assert by_device[0] == {"op": "aten::mm", "calls_per_step": 3.0, "host_ms_per_step": 1.5,
                            "device_ms_per_step": 20.0}  # fmt: skip
    by_host = step_profile._top(averages, lambda e: e.self_cpu_time_total, steps=2)
    assert [r["op"] for r in by_host] == ["aten::item", "aten::mm"]
    old_torch = Row(key="aten::mm", self_cuda_time_total=5.0)  # before torch 2.4's rename
    assert step_profile._device_us(old_torch) == 5.0


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


def test_a_gpu_profile_reads_as_step_times_and_device_columns():
    gpu_report = load_bench_script("gpu_report")
    op = {"op": "aten::mm", "calls_per_step": 154.0, "host_ms_per_step": 3.1, "device_ms_per_step": 18.2}
    row = {"method": "qlora", "device": "cuda", "first_step_s": 9.5, "steady_step_s": 0.9, "steady_in_step_s": 0.1,
           "steady_between_steps_s": 0.8, "tokens_per_step": 1300.0, "device_busy_ms_per_step": 24.0,
           "top_by_device": [op], "top_by_host": [op]}  # fmt: skip
    failed = {"error": "`bench/step_profile.py` exited 1: CUDA error | out of memory"}
    md = gpu_report.markdown({"device": "H200", "date": "d", "profile": {"lora": failed, "qlora": row}})
    assert "| lora | not measured: `bench/step_profile.py` exited 1: CUDA error / out of memory |" in md
    assert "| qlora | 9.500 s | 0.9000 s | 0.1000 s | 0.8000 s | 1300.0 | 24.0 ms |" in md
    assert "qlora, top operators by device time" in md and "| `aten::mm` | 154.0 | 3.1 | 18.2 |" in md


def test_make_bench_runs_only_the_benchmarks_that_need_no_arguments():
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_all", ROOT / "bench" / "run_all.py")
    run_all = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_all)
    names = [s.name for s in run_all.scripts()]
    assert "supervised_logits.py" in names and "train_throughput.py" in names
    for script in run_all.scripts():  # a required argument would fail `make bench` with a usage line
        assert "required=True" not in script.read_text(), script.name


def test_a_benchmark_that_misses_its_goal_fails_make_bench_and_is_named(tmp_path, monkeypatch, capsys):
    """Every script printed "(goal >= 1.3x)" and exited 0 whatever it measured."""
    import importlib.util

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from _goals import GOAL_MISSED, Goals

    goals = Goals()
    assert goals.at_least("packing / padding", 1.31, 1.3) == "(goal >= 1.3x: met)"
    assert goals.at_least("first token", 1.0, 1, strictly=True) == "(goal > 1x: NOT met)"
    assert goals.at_most("loss difference", 2.4e-7, 1e-5) == "(bound <= 1e-05: met)"
    assert goals.at_most("loss difference", float("nan"), 1e-5) == "(bound <= 1e-05: NOT met)"
    assert (
        goals.exit_code() == GOAL_MISSED
        and "goal not met: first token 1.00x, goal > 1x" in capsys.readouterr().out
        and len(goals.missed) == 2
    )
    spec = importlib.util.spec_from_file_location("run_all", ROOT / "bench" / "run_all.py")
    run_all = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_all)
    assert "_goals.py" not in [s.name for s in run_all.scripts()]
    scripts = []
    for name, code in (("fine.py", 0), ("slow.py", GOAL_MISSED)):
        scripts.append(tmp_path / name)
        scripts[-1].write_text(f"import sys\nsys.exit({code})\n")
    monkeypatch.setattr(run_all, "scripts", lambda: scripts)
    assert run_all.main() == GOAL_MISSED and "goals not met: slow.py" in capsys.readouterr().err
    scripts.append(tmp_path / "broken.py")
    scripts[-1].write_text("raise SystemExit(1)\n")
    assert run_all.main() == 1


def test_the_gpu_check_fails_a_missed_qlora_goal(monkeypatch):
    """It printed the QLoRA goal "missed" in its report and exited 0."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import gpu_check

    assert gpu_check.exit_status({"memory": {"vram_ratio": 0.5, "meets_goal": True}}) == 0
    missed = {"vram_ratio": 0.7, "throughput_ratio": 0.9, "meets_goal": False}
    assert gpu_check.exit_status({"memory": missed}) == 3
    # a throughput not measured (a method's run failed) is no goal measured and missed
    assert gpu_check.exit_status({"memory": {"vram_ratio": 0.5, "meets_goal": False}}) == 0
    assert gpu_check.exit_status({"memory": {}}) == 0  # a dry run: no VRAM on the CPU, no verdict
    assert gpu_check.exit_status({"memory": {"meets_goal": False}, "failed": {"pipeline": "x"}}) == 1
