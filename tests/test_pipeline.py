"""edgetune run: every stage once, then only what changed."""

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from edgetune.cli import main

BENCH = {
    "metric": "json_fields",
    "max_examples": 3,
    "max_new_tokens": 4,
    "kl_examples": 2,
    "few_shot_k": 1,
    "latency_decode_tokens": 3,
    "latency_repeats": 1,
    "threads": 1,
    "adapter_target": False,
    "forgetting": False,
    "gates": {"max_kl": 5.0},
}


def pipeline_recipe(tmp_path, model_dir):
    from test_tune import make_recipe

    path = make_recipe(tmp_path, model_dir, max_steps=2, eval_steps=2, save_steps=2)
    recipe = yaml.safe_load(path.read_text())
    recipe["export"] = {
        "formats": ["gguf", "onnx"],
        "parity_examples": 2,
        "gguf": {"quants": ["q8_0"]},
        "onnx": {"quants": ["fp32"]},
    }
    recipe["bench"] = BENCH
    path.write_text(yaml.safe_dump(recipe))
    return path


def invoke(*args):
    result = CliRunner().invoke(main, ["run", *map(str, args)])
    return result, result.output


def test_second_run_skips_everything_and_an_export_change_reruns_only_export_and_bench(
    tmp_path, tiny_model_dir
):
    recipe = pipeline_recipe(tmp_path, tiny_model_dir)
    first, out = invoke(recipe)
    assert first.exit_code == 0, out
    run = tmp_path / "runs" / "tiny"
    assert "ran data, tune, merge, export, bench; skipped nothing" in out
    assert "previous run" not in out and not (tmp_path / "runs" / "tiny.previous").exists()
    assert (run / "bench" / "report.json").is_file() and (
        run / "export" / "gguf" / "model-q8_0.gguf"
    ).is_file()
    adapter = (run / "adapter" / "adapter_model.safetensors").read_bytes()

    second, out = invoke(recipe)
    assert second.exit_code == 0, out
    assert "ran nothing; skipped data, tune, merge, export, bench" in out
    assert "edgetune bench" in out  # the report of the skipped bench is still shown
    # a candidate dataset checked with --until data leaves the finished stages as they are
    lines = (tmp_path / "data.jsonl").read_text().splitlines()
    (tmp_path / "cand.jsonl").write_text("\n".join(lines[:60]) + "\n")
    checked, out = invoke(recipe, "--until", "data", "--set", f"data.train={tmp_path / 'cand.jsonl'}")
    assert checked.exit_code == 0 and "ran data" in out, out
    back, out = invoke(recipe)
    assert back.exit_code == 0 and "ran data; skipped tune, merge, export, bench" in out, out
    # an ONNX folder that lost its tokenizer is no finished export (chat could not load it)
    (run / "export" / "onnx" / "fp32" / "tokenizer.json").unlink()
    mended, out = invoke(recipe)
    assert mended.exit_code == 0 and "ran export, bench; skipped data, tune, merge" in out, out
    assert (run / "export" / "onnx" / "fp32" / "tokenizer.json").is_file()
    # a GGUF changed in place (same size): its parity "pass" was about other bytes, and --pick shipped it
    gguf = run / "export" / "gguf" / "model-q8_0.gguf"
    with gguf.open("r+b") as f:
        f.seek(gguf.stat().st_size - 8)
        f.write(b"\x00" * 8)
    changed, out = invoke(recipe)
    assert changed.exit_code == 0 and "ran export, bench; skipped data, tune, merge" in out, out
    # a hand-run export of a type the recipe does not list: benched, and picked, as if it were
    by_hand = CliRunner().invoke(main, ["export", str(run), "--to", "gguf", "--quant", "f16"])
    assert by_hand.exit_code == 0, by_hand.output
    pruned, out = invoke(recipe)
    # the files its report measured are the ones left: it stands
    assert pruned.exit_code == 0 and "ran nothing; skipped data, tune, merge, export, bench" in out, out
    said = "export/gguf/model-f16.gguf is not in the recipe's exports: moved to unlisted-exports/gguf/ ("
    assert said in " ".join(out.split()), out
    assert sorted(p.name for p in (run / "export" / "gguf").glob("*.gguf")) == ["model-q8_0.gguf"]
    kept = run / "unlisted-exports" / "gguf"  # made by hand: out of bench's and --pick's way, not lost
    assert sorted(p.name for p in kept.iterdir()) == ["model-f16.Modelfile", "model-f16.gguf"]
    # benched by hand too: the report measured the file removed, so the bench runs again
    for command in (["export", str(run), "--to", "gguf", "--quant", "f16"], ["bench", str(run)]):
        by_hand = CliRunner().invoke(main, command)
        assert by_hand.exit_code == 0, by_hand.output
    rebenched, out = invoke(recipe)
    assert rebenched.exit_code == 0 and "ran bench; skipped data, tune, merge, export" in out, out
    report = json.loads((run / "bench" / "report.json").read_text())
    assert [t["name"] for t in report["targets"]] == ["torch/merged", "onnx/fp32", "gguf/q8_0"]

    onnx_made = (run / "export" / "onnx" / "fp32" / "model.onnx").stat().st_mtime_ns
    third, out = invoke(recipe, "--set", "export.gguf.quants=f16")
    assert third.exit_code == 0, out
    assert "ran export, bench; skipped data, tune, merge" in out
    # only the GGUF settings changed: the ONNX folder is kept as it was, not traced again
    assert "export: onnx up to date, kept" in out and "onnx: fp32 written" not in out, out
    assert (run / "export" / "onnx" / "fp32" / "model.onnx").stat().st_mtime_ns == onnx_made
    assert sorted(p.name for p in (run / "export" / "gguf").glob("*.gguf")) == ["model-f16.gguf"]
    assert sorted(p.name for p in kept.glob("*.gguf")) == ["model-f16.gguf", "model-q8_0.gguf"]
    listed = json.loads((run / "manifest.json").read_text())["stages"]["export"]["gguf"]
    assert [entry["quant"] for entry in listed] == ["f16"]  # the q8_0 it removed is not listed
    report = json.loads((run / "bench" / "report.json").read_text())
    assert [t["name"] for t in report["targets"]] == ["torch/merged", "onnx/fp32", "gguf/f16"]
    assert (run / "adapter" / "adapter_model.safetensors").read_bytes() == adapter
    only_gguf, out = invoke(recipe, "--set", "export.gguf.quants=f16", "--set", "export.formats=[gguf]")
    assert only_gguf.exit_code == 0 and not (run / "export" / "onnx").exists(), out
    assert (run / "unlisted-exports" / "onnx" / "fp32" / "model.onnx").is_file()
    record = json.loads((run / "manifest.json").read_text())["stages"]["export"]
    assert "gguf" in record and not [k for k in record if k.startswith("onnx")]  # it lists what is there
    assert [r["quant"] for r in record["gguf_parity"]] == ["f16"] and record["status"] == "done"
    # a manual export stopped before its checks: the files are not a finished export stage
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["stages"]["export"]["status"] = "running"
    (run / "manifest.json").write_text(json.dumps(manifest))
    again, out = invoke(recipe, "--set", "export.gguf.quants=f16", "--set", "export.formats=[gguf]")
    assert again.exit_code == 0 and "ran export, bench; skipped data, tune, merge" in out, out

    fourth, out = invoke(recipe, "--set", "export.gguf.quants=f16", "--set", "train.lr=5e-4")
    assert fourth.exit_code == 0, out
    assert "ran tune, merge, export, bench; skipped data" in out
    assert (tmp_path / "runs" / "tiny.previous" / "adapter").is_dir()  # the earlier run is kept


def test_a_failed_gate_stops_make_with_exit_3(tmp_path, tiny_model_dir):
    recipe = pipeline_recipe(tmp_path, tiny_model_dir)
    result, out = invoke(recipe, "--set", "bench.gates.max_size_mb=0.001")
    assert result.exit_code == 3, out
    assert "bench gates failed: onnx/fp32 (cpu): size" in out and "gguf/q8_0 (cpu): size" in out
    again, out = invoke(recipe, "--set", "bench.gates.max_size_mb=0.001")
    assert again.exit_code == 3 and "skipped data, tune, merge, export, bench" in out
    assert "re-applied" not in out
    # a gate is no measurement: dropping it re-gates the report instead of re-running the bench
    report = tmp_path / "runs" / "tiny" / "bench" / "report.json"
    measured = json.loads(report.read_text())
    relaxed, out = invoke(recipe)
    assert relaxed.exit_code == 0, out
    assert "skipped data, tune, merge, export, bench" in out and "verdicts re-applied" in out
    regated = json.loads(report.read_text())
    assert [t["gate"] for t in regated["targets"]] == ["reference", "pass", "pass"]
    assert [t["decode_tok_s"] for t in regated["targets"]] == [t["decode_tok_s"] for t in measured["targets"]]
    assert "FAIL" not in (report.parent / "report.md").read_text()


def test_a_file_that_fails_its_parity_check_fails_the_run_and_is_never_picked(
    tmp_path, tiny_model_dir, monkeypatch
):
    """A run used to exit 0 with a file whose parity check had failed, skip its export as up to
    date the next time, and --pick it (the smallest file passing max_kl)."""
    from edgetune.export import parity

    recipe = pipeline_recipe(tmp_path, tiny_model_dir)
    run = tmp_path / "runs" / "tiny"
    with monkeypatch.context() as patched:
        patched.setitem(parity.GOALS, "q8_0", {"kl": 1e-12})  # no quantised file is that exact
        until, out = invoke(recipe, "--until", "export")
        assert until.exit_code == 3, out
        assert "export parity failed: gguf/q8_0: failed its export parity check (KL" in out
        on, out = invoke(recipe)  # the export is what it is: the run benches it, and its gates fail it
        assert on.exit_code == 3 and "ran bench; skipped data, tune, merge, export" in out, out
        assert "gguf/q8_0 (cpu): export parity: failed its export parity check (KL" in out
        report = json.loads((run / "bench" / "report.json").read_text())
        assert [t["gate"] for t in report["targets"]] == ["reference", "pass", "fail"]
        assert report["targets"][1]["export_parity_problem"] is None
        picked, out = invoke(recipe, "--pick")
        assert picked.exit_code == 0 and out.strip().endswith("export/onnx/fp32"), out
        strict, out = invoke(recipe, "--pick", "--gate")  # asked for: the file passed over fails the run
        assert strict.exit_code == 3 and strict.stdout.strip().endswith("export/onnx/fp32"), out
        assert "gguf/q8_0 (cpu): export parity" in strict.stderr
        nogate, out = invoke(recipe, "--no-gate")
        assert nogate.exit_code == 0, out
    # the goals edgetune promises: the file passes them, and the verdict follows
    checked = CliRunner().invoke(main, ["export", str(run), "--check"])
    assert checked.exit_code == 0, checked.output
    regated, out = invoke(recipe)
    assert regated.exit_code == 0 and "skipped data, tune, merge, export, bench" in out, out
    report = json.loads((run / "bench" / "report.json").read_text())
    assert [t["gate"] for t in report["targets"]] == ["reference", "pass", "pass"]


def test_a_run_dir_that_holds_someone_elses_files_is_never_moved_or_replaced(tmp_path, tiny_model_dir):
    """`--run-dir .` in a project, or a <run>.previous the user keeps files in: refused, untouched."""
    recipe = pipeline_recipe(tmp_path, tiny_model_dir)
    project = tmp_path / "proj"
    (project / "bench").mkdir(parents=True)
    (project / "notes.txt").write_text("mine")
    for command in ("run", "tune"):
        result = CliRunner().invoke(main, [command, str(recipe), "--run-dir", str(project)])
        assert result.exit_code == 2 and "holds files but no edgetune run" in result.output, result.output
    assert sorted(p.name for p in project.iterdir()) == ["bench", "notes.txt"]
    # a real run whose tune inputs changed is set aside as <run>.previous: never over a stranger
    run = tmp_path / "runs" / "r"
    (run / "bench").mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"pipeline": {}}))
    previous = tmp_path / "runs" / "r.previous"
    previous.mkdir()
    (previous / "important.txt").write_text("keep")
    result = CliRunner().invoke(main, ["run", str(recipe), "--run-dir", str(run)])
    assert result.exit_code == 2 and "r.previous: holds files but no edgetune run" in result.output
    assert (previous / "important.txt").read_text() == "keep" and (run / "bench").is_dir()


def test_a_bench_that_cannot_run_is_refused_before_anything_is_tuned(tmp_path, tiny_model_dir):
    recipe = pipeline_recipe(tmp_path, tiny_model_dir)
    plain = tmp_path / "plain.jsonl"  # answers bench.metric json_fields cannot read
    plain.write_text(
        "".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) + "\n" for i in range(40))
    )
    text = tmp_path / "text.jsonl"  # rows with no answer: retention is unknown, a gate on it fails
    text.write_text("".join(json.dumps({"text": f"log line {i}: link down"}) + "\n" for i in range(40)))
    for overrides, message in (
        (["data.valid_fraction=0", "data.test_fraction=0"], "the recipe holds none out"),
        (["bench.devices=[cuda]"], "bench.devices: cuda, but torch sees no CUDA device"),
        ([f"data.train={plain}"], "bench.metric json_fields compares the fields of a JSON object"),
        (
            [f"data.train={text}", "bench.metric=rouge_l", "bench.gates.min_retention.q8_0=0.9"],
            "bench.gates.min_retention: the held-out rows are text, with no answer to score",
        ),
        (
            [f"data.train={text}", "bench.metric=rouge_l", "bench.gates.beats_prompting=true"],
            "bench.gates.beats_prompting: the held-out rows are text, with no answer to score",
        ),
        (
            [f"data.train={text}", "bench.metric=rouge_l", "bench.gates.min_metric=0.5"],
            "bench.gates.min_metric: the held-out rows are text, with no answer to score",
        ),
    ):
        sets = [arg for o in overrides for arg in ("--set", o)]
        result = CliRunner().invoke(main, ["run", str(recipe), *sets, "--run-dir", str(tmp_path / "r")])
        assert result.exit_code == 2 and message in result.output, result.output
        assert not (tmp_path / "r").exists()
    # a run benched before (the default runs/<name>) is checked too: the new data may not be scorable
    (tmp_path / "r" / "bench").mkdir(parents=True)
    (tmp_path / "r" / "bench" / "report.json").write_text("{}")
    (tmp_path / "r" / "recipe.yaml").write_text("name: tiny\n")
    again = CliRunner().invoke(
        main, ["run", str(recipe), "--set", f"data.train={plain}", "--run-dir", str(tmp_path / "r")]
    )
    assert again.exit_code == 2 and "bench.metric json_fields compares" in again.output, again.output
    assert not (tmp_path / "r.previous").exists() and not (tmp_path / "r" / "adapter").exists()  # no tune
    # and on devices it was not benched on: the bench must run again there, after the tune
    report = {"targets": [{"name": "torch/merged", "device": "cpu"}]}
    (tmp_path / "r" / "bench" / "report.json").write_text(json.dumps(report))
    cuda = CliRunner().invoke(
        main, ["run", str(recipe), "--set", "bench.devices=[cpu,cuda]", "--run-dir", str(tmp_path / "r")]
    )
    assert cuda.exit_code == 2 and "bench.devices: cuda, but torch sees no CUDA" in cuda.output, cuda.output
    assert (tmp_path / "r" / "recipe.yaml").read_text() == "name: tiny\n"  # nothing written
    shutil.rmtree(tmp_path / "r")
    # --pick under gates that check no file's answers would pick the smallest file unchecked
    sets = ["--set", "bench.gates.min_retention={}", "--set", "bench.gates.max_kl=null"]
    picked = CliRunner().invoke(main, ["run", str(recipe), *sets, "--run-dir", str(tmp_path / "r"), "--pick"])
    assert picked.exit_code == 3 and "gates check no file's answers" in picked.output, picked.output
    assert not (tmp_path / "r").exists()


def test_a_text_dataset_exports_with_parity_on_its_opening_words(tmp_path, tiny_model_dir):
    """A text row has no prompt: parity continues its first words in torch and in each file (an
    empty prompt crashed greedy decoding before)."""
    from conftest import write_jsonl
    from test_tune import make_recipe

    from edgetune.export.run import export
    from edgetune.tune.run import tune

    recipe = make_recipe(tmp_path, tiny_model_dir, max_steps=2, eval_steps=2, save_steps=2)
    write_jsonl(
        tmp_path / "text.jsonl", [{"text": f"router {i} lost its uplink at site {i % 7}"} for i in range(60)]
    )
    run = tune(str(recipe), ["data.train=text.jsonl", "export.parity_examples=2"]).run_dir
    results = export(run, ["gguf", "onnx"], ["f32", "fp32"])
    assert {row.quant for row in results["parity"]} == {"f32", "fp32"}
    assert all(row.passed for row in results["parity"]), results["parity"]
    # benched: no answer to score, so no verdict on prompting (it said "does NOT beat" on 0 examples)
    from edgetune.bench.run import bench

    settings = yaml.safe_load((run / "recipe.yaml").read_text())
    settings["bench"] = {**BENCH, "metric": "exact", "gates": {}}
    (run / "recipe.yaml").write_text(yaml.safe_dump(settings))
    report = bench(run)
    assert report["baselines"] and report["tuning_beats_prompting"] is None
    said = (run / "bench" / "report.md").read_text()
    assert "prompting on this task" not in said and "against - for the tuned model" not in said
    assert "base model zero shot: no answers to score (the held-out rows are text)" in said


def test_a_start_that_failed_before_its_first_save_is_not_set_aside_over_a_real_run(tmp_path):
    """The Trainer makes checkpoints/ when it starts: a failed first attempt must neither count as
    a run to keep nor replace <run>.previous."""
    from edgetune.pipeline import _set_aside

    run, previous = tmp_path / "r", tmp_path / "r.previous"
    (run / "checkpoints").mkdir(parents=True)
    (run / "manifest.json").write_text("{}")
    (previous / "adapter").mkdir(parents=True)
    (previous / "manifest.json").write_text("{}")
    _set_aside(run, None)
    assert (run / "checkpoints").is_dir() and (previous / "adapter").is_dir()


def test_a_set_aside_killed_while_removing_the_older_one_leaves_no_half_run(tmp_path, monkeypatch):
    """The run kept before was removed in place: killed midway, <run>.previous held part of a run,
    which every later run refused as "holds files but no edgetune run"."""
    import edgetune.pipeline
    from edgetune.pipeline import _set_aside
    from edgetune.rundir import is_run_dir

    def make_run(path: Path, mark: str) -> None:
        (path / "adapter").mkdir(parents=True)
        (path / "recipe.yaml").write_text("name: r\n")
        (path / "manifest.json").write_text(json.dumps({"mark": mark}))

    run, previous = tmp_path / "r", tmp_path / "r.previous"
    make_run(run, "new")
    make_run(previous, "old")
    real = edgetune.pipeline.remove_paths

    def killed(paths):
        for path in paths:
            if path.exists():
                (path / "recipe.yaml").unlink()  # partway through
                raise KeyboardInterrupt
        return real(paths)

    monkeypatch.setattr(edgetune.pipeline, "remove_paths", killed)
    with pytest.raises(KeyboardInterrupt):
        _set_aside(run, None)
    assert not previous.exists() and is_run_dir(run)  # nothing half: the run, and a hidden leftover
    monkeypatch.setattr(edgetune.pipeline, "remove_paths", real)
    _set_aside(run, None)  # the next run's set-aside goes on, and removes the leftover
    assert json.loads((previous / "manifest.json").read_text()) == {"mark": "new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.previous"]


@pytest.mark.parametrize("length", [242, 250, 255])
def test_a_run_whose_name_is_near_the_limit_is_set_aside_and_replaced_again(tmp_path, length):
    """<run>.previous and its hidden temporary were over the 255 bytes a name may have: the second
    `edgetune run` with changed tune inputs failed with "internal error: OSError: [Errno 36]"."""
    from edgetune.pipeline import _set_aside
    from edgetune.rundir import is_run_dir

    def make_run(path: Path, mark: str) -> None:
        (path / "adapter").mkdir(parents=True)
        (path / "manifest.json").write_text(json.dumps({"mark": mark}))

    runs = tmp_path / "ln"
    run, twin = runs / ("a" * length), runs / ("a" * (length - 1) + "b")  # alike but for the end
    for mark in ("first", "second"):
        make_run(run, mark)
        _set_aside(run, None)
    make_run(twin, "twin")
    _set_aside(twin, None)
    kept = sorted(runs.iterdir())
    assert len(kept) == 2 and all(p.name.endswith(".previous") and len(p.name) <= 255 for p in kept)
    assert {json.loads((p / "manifest.json").read_text())["mark"] for p in kept} == {"second", "twin"}
    assert all(is_run_dir(p) for p in kept)


def test_ctrl_c_in_a_library_run_is_a_keyboard_interrupt_no_handler_for_bad_input_takes(
    tmp_path, tiny_model_dir, monkeypatch
):
    """Interrupted was an EdgetuneError only: a program's `except EdgetuneError:` (or `except
    Exception:`) for a job's bad input took a user's Ctrl-C for a failed job and went on. It is a
    KeyboardInterrupt now, as Terminated is, still saying how to go on (the CLI's 130: above)."""
    import edgetune.pipeline
    from edgetune.errors import EdgetuneError, Interrupted
    from edgetune.pipeline import run_pipeline

    def interrupted(stage, *args):
        raise KeyboardInterrupt

    monkeypatch.setattr(edgetune.pipeline, "_run_stage", interrupted)
    recipe = pipeline_recipe(tmp_path, tiny_model_dir)
    with pytest.raises(
        KeyboardInterrupt, match="interrupted in data; the same `edgetune run` continues"
    ) as stop:
        try:
            run_pipeline(str(recipe), [], tmp_path / "r")
        except EdgetuneError:  # a program's handler for a job's bad input
            pass
    assert isinstance(stop.value, Interrupted)


def test_an_interrupted_run_says_where_and_how_to_go_on(tmp_path, tiny_model_dir, monkeypatch):
    import edgetune.pipeline

    real_run_stage = edgetune.pipeline._run_stage

    def interrupted(stage, *args):
        raise KeyboardInterrupt

    monkeypatch.setattr(edgetune.pipeline, "_run_stage", interrupted)
    recipe = pipeline_recipe(tmp_path, tiny_model_dir)
    result = CliRunner().invoke(main, ["run", str(recipe), "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 130
    assert "interrupted in data; the same `edgetune run` continues" in result.output, result.output
    # tune turns Ctrl-C into its own advice (`edgetune tune --resume`): under run, run's is the one
    import edgetune.tune.trainer

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(edgetune.pipeline, "_run_stage", real_run_stage)
    monkeypatch.setattr(edgetune.tune.trainer.SupervisedLogitsTrainer, "train", stopped)
    result = CliRunner().invoke(main, ["run", str(recipe), "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 130 and "interrupted in tune; the same `edgetune run`" in result.output, (
        result.output
    )


def test_a_runtime_a_later_stage_needs_is_named_before_the_tune(tmp_path, tiny_model_dir, monkeypatch):
    """Without llama-cpp-python `edgetune run` tuned and merged (15 minutes of the demo), then
    stopped in the export stage."""
    import importlib.util

    recipe = pipeline_recipe(tmp_path, tiny_model_dir)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a)
    )
    result = CliRunner().invoke(main, ["run", str(recipe), "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    assert "llama-cpp-python is not installed here (GGUF export and its parity check)" in result.output
    assert not (tmp_path / "r").exists()
    # a recipe without GGUF, or a run that stops before its export, does not need it
    tuned = CliRunner().invoke(
        main, ["run", str(recipe), "--run-dir", str(tmp_path / "r"), "--until", "tune"]
    )
    assert tuned.exit_code == 0, tuned.output


def test_a_tune_that_finished_before_the_run_recorded_it_is_kept_not_resumed(
    tmp_path, tiny_model_dir, monkeypatch
):
    """Stopped between tune's end and the pipeline's record of it: the next `edgetune run` must not
    resume a finished run (refused now: it trained past max_steps) nor train it again."""
    import edgetune.pipeline
    from edgetune.config import load_recipe
    from edgetune.fingerprints import fingerprints
    from edgetune.rundir import sha256_file
    from edgetune.tune.run import tune

    path = pipeline_recipe(tmp_path, tiny_model_dir)
    run = tmp_path / "r"
    recipe = load_recipe(str(path))
    tune(str(path), run_dir=run)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["pipeline"] = {
        "data": manifest.get("pipeline", {}).get("data", ""),
        "tune_started": fingerprints(recipe, run)["tune"](),
    }
    (run / "manifest.json").write_text(json.dumps(manifest))
    adapter = sha256_file(run / "adapter" / "adapter_model.safetensors")
    stages = []
    real = edgetune.pipeline._run_stage

    def only_to_tune(stage, *args):
        stages.append(stage)
        if stage in ("data", "tune"):
            real(stage, *args)

    monkeypatch.setattr(edgetune.pipeline, "_run_stage", only_to_tune)
    result = CliRunner().invoke(main, ["run", str(path), "--run-dir", str(run), "--no-gate"])
    assert result.exit_code == 0, result.output
    assert "tune" in stages and "nothing to resume" not in result.output
    assert not (tmp_path / "r.previous").exists()  # not set aside and trained again either
    assert sha256_file(run / "adapter" / "adapter_model.safetensors") == adapter
    assert json.loads((run / "manifest.json").read_text())["stages"]["tune"]["steps"] == 2


def test_until_stops_after_that_stage_and_the_next_run_goes_on_from_there(tmp_path, tiny_model_dir):
    recipe = pipeline_recipe(tmp_path, tiny_model_dir)
    run = tmp_path / "runs" / "tiny"
    first, out = invoke(recipe, "--set", "export.formats=[gguf]", "--until", "merge")
    assert first.exit_code == 0, out
    assert "ran data, tune, merge; skipped nothing" in out
    assert (run / "merged" / "config.json").is_file()
    assert not (run / "export").exists() and not (run / "bench").exists()

    second, out = invoke(recipe, "--set", "export.formats=[gguf]")
    assert second.exit_code == 0, out
    assert "ran export, bench; skipped data, tune, merge" in out
    assert (run / "bench" / "report.json").is_file()

    from edgetune.commands.run import run as run_command
    from edgetune.pipeline import STAGES

    until = next(p for p in run_command.params if p.name == "until")
    assert list(until.type.choices) == list(
        STAGES
    )  # the CLI's list, written out so as not to import the pipeline
    refused, out = invoke(recipe, "--until", "export", "--pick")
    assert refused.exit_code == 2 and "--pick" in out and "--until export" in out


def test_a_merged_model_damaged_since_is_merged_again(tmp_path, tiny_model_dir):
    """A truncated merged/model.safetensors: `run` said "merge: up to date, skipped", then failed
    exporting it; `export` failed the same way, and nothing said to merge again."""
    recipe = pipeline_recipe(tmp_path, tiny_model_dir)
    run = tmp_path / "runs" / "tiny"
    first, out = invoke(recipe, "--set", "export.formats=[gguf]", "--until", "merge")
    assert first.exit_code == 0, out
    weights = run / "merged" / "model.safetensors"
    whole = weights.read_bytes()
    weights.write_bytes(whole[: len(whole) // 2])
    again, out = invoke(recipe, "--set", "export.formats=[gguf]", "--until", "merge")
    assert again.exit_code == 0, out
    assert "ran merge; skipped data, tune" in out and weights.read_bytes() == whole
    weights.write_bytes(whole[: len(whole) // 2])
    exported = CliRunner().invoke(main, ["export", str(run), "--to", "gguf", "--quant", "q8_0"])
    assert exported.exit_code == 0, exported.output
    assert "merging the adapter again" in exported.output and weights.read_bytes() == whole


# the recipe fields each stage's fingerprint hashed when ADDED_LATER was begun (2026-12-04): a run
# fingerprinted then must still be up to date after an upgrade that adds a field
HASHED_FIELDS = {
    "data": "train valid test format template system_prompt max_seq_len valid_fraction test_fraction "
    "split_seed dedupe drop_overlap truncation skip_bad_rows",
    "model": "base revision trust_remote_code allow_pickle",
    "train": "method precision lr epochs max_steps batch_size grad_accum warmup_ratio scheduler "
    "weight_decay max_grad_norm seed eval_steps save_steps early_stopping_patience packing "
    "gradient_checkpointing threads tensorboard lora.r lora.alpha lora.dropout lora.target_modules "
    "lora.rslora lora.dora",
    "export": "formats parity_examples gguf.quants gguf.imatrix gguf.f16_output onnx.quants "
    "onnx.int8_block_size onnx.int4_block_size onnx.int4_accuracy_level onnx.int4_8bit_layers "
    "onnx.int4_embeddings",
    "bench": "metric devices max_examples max_new_tokens few_shot_k baseline_examples kl_examples "
    "baselines adapter_target forgetting forgetting_kl_warn forgetting_ppl_ratio_warn latency "
    "latency_decode_tokens latency_repeats threads gates",
}


def _field_paths(prefix, obj):
    import dataclasses

    paths = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        nested = dataclasses.is_dataclass(value) and f"{prefix}.{f.name}" != "bench.gates"
        paths += _field_paths(f"{prefix}.{f.name}", value) if nested else [f"{prefix}.{f.name}"]
    return paths


def test_a_recipe_field_added_later_is_registered_so_upgrades_do_not_retrain():
    from edgetune.config import load_recipe
    from edgetune.fingerprints import ADDED_LATER

    recipe = load_recipe("demo")
    for section, names in HASHED_FIELDS.items():
        known = {f"{section}.{name}" for name in names.split()}
        new = set(_field_paths(section, getattr(recipe, section))) - known - set(ADDED_LATER)
        assert not new, (
            f"recipe fields {sorted(new)} would change every existing run's {section} fingerprint, so "
            "`edgetune run` would redo that stage after an upgrade: add each to fingerprints.ADDED_LATER "
            "with the value that does what edgetune did before it"
        )


def test_a_field_at_its_earlier_behaviour_stays_out_of_the_fingerprint(monkeypatch, tmp_path):
    import dataclasses

    from edgetune import fingerprints as fp
    from edgetune.config import load_recipe

    demo = load_recipe("demo")
    whole = dataclasses.asdict(demo.train)
    unhashed = ("threads", "tensorboard")  # fp.UNHASHED: they change nothing the tune makes
    assert fp.hashed_settings("train", demo.train) == {k: v for k, v in whole.items() if k not in unhashed}
    assert fp.hashed_settings("train", demo.train, legacy=True) == whole
    before = fp.fingerprints(demo, tmp_path)["tune"]()
    # train.scheduler and train.lora.rslora stand in for fields added after a run was fingerprinted
    assert (demo.train.scheduler, demo.train.lora.rslora) == ("cosine", False)
    monkeypatch.setattr(fp, "ADDED_LATER", {"train.scheduler": "cosine", "train.lora.rslora": False})
    hashed = fp.hashed_settings("train", demo.train)
    assert "scheduler" not in hashed and "rslora" not in hashed["lora"]
    assert {k: v for k, v in whole.items() if k not in ("scheduler", "lora", *unhashed)} == {
        k: v for k, v in hashed.items() if k != "lora"
    }
    neutral = fp.fingerprints(demo, tmp_path)["tune"]()
    assert neutral != before
    # set to anything else, the field is hashed as usual
    linear = load_recipe("demo", ["train.scheduler=linear"])
    assert fp.hashed_settings("train", linear.train)["scheduler"] == "linear"
    assert fp.fingerprints(linear, tmp_path)["tune"]() not in (before, neutral)


def test_a_runs_recipe_leaves_out_fields_added_later_at_their_earlier_behaviour(monkeypatch, tmp_path):
    """A no-op `edgetune run` by a newer edgetune wrote `data.split_by: position` into the run's
    recipe.yaml, and the edgetune before it then refused every command on that run ("unknown key")."""
    import yaml

    from edgetune import fingerprints as fp
    from edgetune.config import load_recipe
    from edgetune.run_recipe import dump_run_recipe

    (tmp_path / "runs" / "demo").mkdir(parents=True)
    run = tmp_path / "runs" / "demo"
    monkeypatch.setattr(fp, "ADDED_LATER", {**fp.ADDED_LATER, "train.lora.rslora": False})
    saved = yaml.safe_load(dump_run_recipe(load_recipe("demo"), run))
    assert "split_by" not in saved["data"] and "parity_kl" not in saved["export"]
    assert "rslora" not in saved["train"]["lora"] and saved["train"]["lora"]["r"] == 16
    (run / "recipe.yaml").write_text(dump_run_recipe(load_recipe("demo"), run))
    assert load_recipe(str(run / "recipe.yaml")).data.split_by == "position"
    chosen = load_recipe(
        "demo", ["data.split_by=input", "export.parity_kl.q8_0=0.01", "train.lora.rslora=true"]
    )
    saved = yaml.safe_load(dump_run_recipe(chosen, run))
    assert saved["data"]["split_by"] == "input" and saved["export"]["parity_kl"] == {"q8_0": 0.01}
    assert saved["train"]["lora"]["rslora"] is True


def test_a_moved_project_a_no_op_setting_and_an_earlier_edgetunes_fingerprints_skip(tmp_path, tiny_model_dir):
    """The fingerprints hashed the data files' absolute paths (a project moved or checked out
    elsewhere retrained from scratch) and settings that change nothing the tune makes
    (train.threads, train.tensorboard, --allow-pickle); a run fingerprinted that way by an earlier
    edgetune is still up to date, and gets today's fingerprints."""
    import shutil

    from edgetune import fingerprints as fp
    from edgetune.config import load_recipe

    project = tmp_path / "a"
    project.mkdir()
    recipe = pipeline_recipe(project, tiny_model_dir)
    first = CliRunner().invoke(main, ["run", str(recipe), "--run-dir", str(project / "runs" / "tiny")])
    assert first.exit_code == 0, first.output
    moved = tmp_path / "b"
    shutil.move(project, moved)
    run = moved / "runs" / "tiny"
    for extra in ([], ["--set", "train.threads=2", "--allow-pickle"]):
        again, out = invoke(moved / "recipe.yaml", "--run-dir", run, *extra)
        assert again.exit_code == 0 and "ran nothing; skipped data, tune, merge, export, bench" in out, out
    # what later commands read from the run is where the data is now
    assert load_recipe(str(run / "recipe.yaml")).data.train == str(moved / "data.jsonl")

    manifest = json.loads((run / "manifest.json").read_text())
    today = dict(manifest["pipeline"])
    loaded = load_recipe(str(moved / "recipe.yaml"))
    earlier = {stage: value() for stage, value in fp.fingerprints(loaded, run, legacy=True).items()}
    assert all(earlier[stage] != today[stage] for stage in fp.STAGES)
    manifest["pipeline"] = {**earlier, "tune_started": earlier["tune"]}
    (run / "manifest.json").write_text(json.dumps(manifest))
    upgraded, out = invoke(moved / "recipe.yaml", "--run-dir", run)
    assert upgraded.exit_code == 0 and "ran nothing; skipped data, tune, merge, export, bench" in out, out
    recorded = json.loads((run / "manifest.json").read_text())["pipeline"]
    assert {stage: recorded[stage] for stage in fp.STAGES} == {s: today[s] for s in fp.STAGES}
    # and each exported format's own, so that a change to one format's settings re-exports only it
    assert recorded["export.gguf"] == today["export.gguf"] and recorded["export.onnx"] == today["export.onnx"]


def test_a_moved_projects_run_is_taken_up_by_its_own_commands(tmp_path, tiny_model_dir, monkeypatch):
    """A run's recipe.yaml held absolute data paths: after the project moved, merge, export, bench
    and tune --resume failed ("data.jsonl: file not found"); only `edgetune run` rewrote it. A base
    named `model` (a folder in the current one) stayed `model`: merge from another folder failed."""
    from test_tune import make_recipe

    from edgetune.config import load_recipe

    project = tmp_path / "a"
    project.mkdir()
    shutil.copytree(tiny_model_dir, project / "model")
    recipe = make_recipe(project, Path("model"), max_steps=4, eval_steps=2, save_steps=2)
    monkeypatch.chdir(project)
    tuned = CliRunner().invoke(
        main, ["tune", str(recipe), "--run-dir", "runs/tiny", "--set", "train.max_steps=2"]
    )
    assert tuned.exit_code == 0, tuned.output
    saved = load_recipe(str(project / "runs" / "tiny" / "recipe.yaml"))
    assert saved.data.train == str(project / "data.jsonl") and saved.model.base == str(project / "model")
    assert "../../data.jsonl" in (project / "runs" / "tiny" / "recipe.yaml").read_text()
    # a run copied away alone finds its project's files where they were
    alone = shutil.copytree(project / "runs" / "tiny", tmp_path / "x" / "y" / "z")
    merged = CliRunner().invoke(main, ["merge", str(alone)])
    assert merged.exit_code == 0 and (alone / "merged" / "config.json").is_file(), merged.output
    moved = tmp_path / "b"
    shutil.move(project, moved)
    monkeypatch.chdir(tmp_path)
    merged = CliRunner().invoke(main, ["merge", str(moved / "runs" / "tiny")])
    assert merged.exit_code == 0, merged.output
    assert (moved / "runs" / "tiny" / "merged" / "config.json").is_file()
    # paths outside the project stay absolute
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(moved / "data.jsonl", outside / "data.jsonl")
    tuned = CliRunner().invoke(
        main, ["tune", str(moved / "recipe.yaml"), "--run-dir", str(moved / "runs" / "out"),
               "--set", f"data.train={outside / 'data.jsonl'}", "--set", f"model.base={moved / 'model'}",
               "--set", "train.max_steps=1"],
    )  # fmt: skip
    assert tuned.exit_code == 0, tuned.output
    text = (moved / "runs" / "out" / "recipe.yaml").read_text()
    assert f"train: {outside / 'data.jsonl'}" in text and "base: ../../model" in text


def test_a_local_base_edited_in_place_retrains_and_one_merely_touched_does_not(tmp_path, tiny_model_dir):
    """The tune fingerprint held a local base's path only: weights changed in place were never
    trained on, and merge folded the old adapter into the new base."""
    import os
    import shutil

    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    recipe = pipeline_recipe(tmp_path, base)
    first, out = invoke(recipe, "--until", "tune")
    assert first.exit_code == 0, out
    config = base / "config.json"
    os.utime(config, ns=(0, 0))  # its time changes, not its bytes: hashed again, the same
    touched, out = invoke(recipe, "--until", "tune")
    assert touched.exit_code == 0 and "ran nothing; skipped data, tune" in out, out
    stat = json.loads((tmp_path / "runs" / "tiny" / "manifest.json").read_text())["pipeline"]["base_model"]
    assert stat["sha256"] and stat["name"] == str(base)
    config.write_text(json.dumps({**json.loads(config.read_text()), "note": "edited in place"}))
    edited, out = invoke(recipe, "--until", "tune")
    assert edited.exit_code == 0 and "ran tune; skipped data" in out, out
    assert (tmp_path / "runs" / "tiny.previous" / "adapter").is_dir()


def test_the_bench_fingerprint_tells_each_onnx_variant_apart(tmp_path):
    """Every variant's file is model.onnx: keyed by name, only the last one's bytes counted, and a
    changed fp32 beside an int8 left bench up to date."""
    from edgetune import fingerprints as fp
    from edgetune.config import load_recipe

    recipe = load_recipe("demo")
    for quant in ("fp32", "int8"):
        (tmp_path / "export" / "onnx" / quant).mkdir(parents=True)
        (tmp_path / "export" / "onnx" / quant / "model.onnx").write_bytes(quant.encode())

    def bench(legacy=False):
        return fp.fingerprints(recipe, tmp_path, legacy=legacy)["bench"]()

    before, before_legacy = bench(), bench(legacy=True)
    (tmp_path / "export" / "onnx" / "fp32" / "model.onnx").write_bytes(b"changed")
    assert bench() != before
    assert bench(legacy=True) == before_legacy  # what the earlier fingerprint missed


def test_a_legacy_tune_fingerprint_does_not_adopt_a_base_edited_before_the_upgrade(tmp_path, tiny_model_dir):
    """An earlier edgetune's tune fingerprint held a local base's path only: on the first run after
    an upgrade, a base edited in place must not pass as the one the adapter was trained on."""
    import shutil

    from edgetune import fingerprints as fp
    from edgetune.config import load_recipe

    base = shutil.copytree(tiny_model_dir, tmp_path / "base")
    recipe = pipeline_recipe(tmp_path, base)
    first, out = invoke(recipe, "--until", "tune")
    assert first.exit_code == 0, out
    run = tmp_path / "runs" / "tiny"
    manifest = json.loads((run / "manifest.json").read_text())
    earlier = fp.fingerprints(load_recipe(str(recipe)), run, legacy=True)
    manifest["pipeline"] = {stage: earlier[stage]() for stage in ("data", "tune")}
    manifest["pipeline"]["tune_started"] = manifest["pipeline"]["tune"]
    (run / "manifest.json").write_text(json.dumps(manifest))
    config = base / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "note": "edited in place"}))
    again, out = invoke(recipe, "--until", "tune")
    assert again.exit_code == 0 and "ran tune; skipped data" in out, out


def test_a_local_bases_hash_is_taken_again_only_when_its_files_times_change(
    tmp_path, tiny_model_dir, monkeypatch
):
    import os
    import shutil

    from edgetune import fingerprints as fp
    from edgetune.config import load_recipe

    base = shutil.copytree(tiny_model_dir, tmp_path / "base")
    recipe = load_recipe(str(pipeline_recipe(tmp_path, base)))
    hashed = []
    real = fp.sha256_files
    monkeypatch.setattr(fp, "sha256_files", lambda root, files: hashed.append(root) or real(root, files))
    done: dict = {}
    first = fp.base_identity(recipe, done)
    assert fp.base_identity(recipe, done) == first and len(hashed) == 1  # the record's hash
    os.utime(base / "config.json", ns=(0, 0))
    assert fp.base_identity(recipe, done) == first and len(hashed) == 2  # times changed: hashed again
    (base / "tokenizer.txt").write_text("a file of any kind counts")
    assert fp.base_identity(recipe, done) != first and len(hashed) == 3
    # new weights of the same size, their old mtime put back (cp -p, rsync -a): `run` skipped every
    # stage while merge refused the run for them
    weights = base / "model.safetensors"
    held = weights.stat()
    before = fp.base_identity(recipe, done)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(held.st_atime_ns, held.st_mtime_ns))
    assert fp.base_identity(recipe, done) != before and len(hashed) == 4


def test_fingerprints_an_earlier_edgetune_recorded_are_computed_as_it_did():
    """The digests 302bbd3's pipeline.py gave for these settings: `legacy` must keep giving them,
    or every run an earlier edgetune fingerprinted redoes its stages after an upgrade."""
    from edgetune import fingerprints as fp
    from edgetune.config import recipe_from_dict

    recipe = recipe_from_dict(
        {"name": "pinned", "data": {"train": "/data/train.jsonl"}, "model": {"base": "/models/base"}}
    )
    assert (
        fp.tune_key(recipe, "d", None) == "4413a3abc58af12566ec03ef8fb7870b7eb8c5f9e5f82602294bbfc9525ff20a"
    )
    data = fp._digest(fp.hashed_settings("data", recipe.data, legacy=True), {"train": "h"})
    assert data == "a91caee7604b266bdfe98546539ebdf713e727fdea39a3deed5ddf66c9fe59c8"
    export = fp._digest(fp.hashed_settings("export", recipe.export, legacy=True))
    assert export == "98f4f020d600d239168055f8d3274e5bcafd408350e9511b0c10514b06a4616c"


def test_a_file_is_read_once_per_process_while_it_stays_as_it_was(tmp_path, monkeypatch):
    """A fresh `run` on a local base hashes its weights for the pipeline and again for tune's
    manifest: the second hash reads nothing, and a rewrite of the same size is read again."""
    import os
    from pathlib import Path

    from edgetune.rundir import sha256_file, sha256_tree

    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"a" * 4096)
    reads = []
    real_open = Path.open

    def reading(self, mode="r", *args, **kwargs):
        if mode == "rb":
            reads.append(self.name)
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", reading)
    first = sha256_file(weights)
    assert sha256_tree(tmp_path) and sha256_file(weights) == first and reads == ["model.safetensors"]
    weights.write_bytes(b"b" * 4096)
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns))
    assert sha256_file(weights) != first and len(reads) == 2


def test_the_example_makefile_never_ships_a_file_that_failed_its_gates(tmp_path, tiny_model_dir):
    """`edgetune run` writes the bench report, then exits 3 on a failed gate: with the report as
    Make's target, the second `make` found it up to date and copied the failing GGUF to dist/."""
    import subprocess
    import sys
    from pathlib import Path

    recipe = pipeline_recipe(tmp_path, tiny_model_dir)
    settings = yaml.safe_load(recipe.read_text())
    settings["export"]["gguf"]["quants"] = ["q4_k_m"]
    settings["bench"] = {**settings["bench"], "gates": {"max_size_mb": 0.001}}
    recipe.write_text(yaml.safe_dump(settings))
    edgetune = Path(sys.executable).parent / "edgetune"
    make = [
        "make",
        "-f",
        str(Path(__file__).parents[1] / "examples" / "Makefile"),
        f"EDGETUNE={edgetune}",
        f"RECIPE={recipe}",
        f"DATA={tmp_path / 'data.jsonl'}",
        f"RUN={tmp_path / 'runs' / 'mk'}",
        f"DIST={tmp_path / 'dist'}",
    ]
    for attempt in (1, 2):
        failed = subprocess.run(make, cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert failed.returncode != 0, (attempt, failed.stdout[-2000:], failed.stderr[-2000:])
        assert "bench gates failed" in failed.stdout + failed.stderr
        assert not (tmp_path / "dist" / "model-q4_k_m.gguf").exists(), attempt
    del settings["bench"]["gates"]
    recipe.write_text(yaml.safe_dump(settings))
    passed = subprocess.run(make, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert passed.returncode == 0, passed.stdout[-2000:] + passed.stderr[-2000:]
    assert (tmp_path / "dist" / "model-q4_k_m.gguf").is_file()
    assert subprocess.run([*make, "-q"], cwd=tmp_path).returncode == 0  # up to date
    # a file exported by hand since then has not been benched: the next make must run (and gate) it
    exported = [str(edgetune), "export", str(tmp_path / "runs" / "mk"), "--to", "gguf", "--quant", "q4_k_m"]
    subprocess.run(exported, cwd=tmp_path, check=True, capture_output=True, timeout=900)
    assert subprocess.run([*make, "-q"], cwd=tmp_path).returncode == 1


def test_run_pick_prints_only_the_path_and_paths_are_never_read_as_markup(tmp_path, tiny_model_dir):
    """A first `run --pick` printed the data check's report on stdout before the path (a Makefile's
    $(shell edgetune run --pick) got 25 lines); a run directory named like rich markup was printed
    mangled, or failed the command."""
    recipe = pipeline_recipe(tmp_path, tiny_model_dir)
    run = tmp_path / "runs" / "e[/x]p[bold]v2"
    picked = CliRunner().invoke(main, ["run", str(recipe), "--run-dir", str(run), "--pick"])
    assert picked.exit_code == 0, picked.output
    assert picked.stdout.splitlines() == [str(run / "export" / "gguf" / "model-q8_0.gguf")], picked.stdout
    again = CliRunner().invoke(main, ["run", str(recipe), "--run-dir", str(run)])
    assert again.exit_code == 0 and f"{run}: ran nothing" in again.stdout, again.output
    merged = CliRunner().invoke(main, ["merge", str(run)])
    assert merged.exit_code == 0 and f"merged model: {run / 'merged'}" in merged.stdout, merged.output
    regated = CliRunner().invoke(main, ["bench", str(run), "--regate"])
    assert regated.exit_code == 0 and f"report: {run / 'bench' / 'report.md'}" in regated.stdout, (
        regated.output
    )


def test_a_retention_gate_on_a_type_the_recipe_does_not_export_is_refused_before_tuning(
    tmp_path, tiny_model_dir
):
    """It failed as unchecked at the very end, after tune, merge, export and bench."""
    recipe = pipeline_recipe(tmp_path, tiny_model_dir)
    refused, out = invoke(recipe, "--set", "bench.gates.min_retention.q4_k_m=0.9")
    assert refused.exit_code == 2, out
    assert "bench.gates.min_retention.q4_k_m: the recipe exports no q4_k_m (export: fp32, q8_0)" in out
    assert not (tmp_path / "runs" / "tiny").exists()
    # gates reported, not enforced: the run goes on (the demo's int8 gate on a GGUF-only run)
    reported, out = invoke(recipe, "--set", "bench.gates.min_retention.q4_k_m=0.9", "--no-gate")
    assert reported.exit_code == 0 and "ran data, tune, merge, export, bench" in out, out


def test_run_adopts_a_tune_that_edgetune_tune_finished_on_the_same_inputs(tmp_path, tiny_model_dir):
    """`edgetune tune R --run-dir D` then `edgetune run R --run-dir D` said "tune inputs changed",
    set the run aside and trained the same adapter again (13 minutes on the demo)."""
    recipe = pipeline_recipe(tmp_path, tiny_model_dir)
    run = tmp_path / "runs" / "tiny"
    tuned = CliRunner().invoke(main, ["tune", str(recipe), "--run-dir", str(run)])
    assert tuned.exit_code == 0, tuned.output
    adapter = (run / "adapter" / "adapter_model.safetensors").read_bytes()
    adopted, out = invoke(recipe, "--until", "merge")
    assert adopted.exit_code == 0 and "tune: finished by `edgetune tune` on these inputs, adopted" in out, out
    assert "ran data, merge; skipped tune" in out and not (tmp_path / "runs" / "tiny.previous").exists()
    assert (run / "adapter" / "adapter_model.safetensors").read_bytes() == adapter
    changed, out = invoke(recipe, "--until", "merge", "--set", "train.lr=5e-4")  # other inputs: retrained
    assert changed.exit_code == 0 and "ran tune, merge" in out and "adopted" not in out, out


def test_run_resumes_a_tune_that_edgetune_tune_started_on_the_same_inputs(tmp_path, tiny_model_dir):
    """`edgetune tune` stopped at a checkpoint, then `edgetune run` on the same recipe: "tune inputs
    changed", the checkpoints set aside in runs/tiny.previous and the tune started from step 0."""
    import shutil

    recipe = pipeline_recipe(tmp_path, tiny_model_dir)
    run = tmp_path / "runs" / "tiny"
    tuned = CliRunner().invoke(main, ["tune", str(recipe), "--run-dir", str(run)])
    assert tuned.exit_code == 0, tuned.output
    # as a tune stopped after its last checkpoint leaves the run: no adapter, its status "running"
    shutil.rmtree(run / "adapter")
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["stages"]["tune"]["status"] = "running"
    (run / "manifest.json").write_text(json.dumps(manifest))
    resumed, out = invoke(recipe, "--until", "tune")
    assert resumed.exit_code == 0 and "ran data, tune" in out, out
    assert "inputs changed" not in out and not (tmp_path / "runs" / "tiny.previous").exists()
    assert "resum" in out.lower() and (run / "adapter" / "adapter_model.safetensors").is_file()


def test_files_an_earlier_edgetune_exported_are_exported_again(tmp_path, tiny_model_dir):
    """A run exported before GGUFs and ONNX folders carried the trained system prompt stayed "up to
    date" after an upgrade: `edgetune run` shipped files that answer without it."""
    recipe = pipeline_recipe(tmp_path, tiny_model_dir)
    first, out = invoke(recipe, "--no-gate")
    assert first.exit_code == 0, out
    run = tmp_path / "runs" / "tiny"
    manifest = json.loads((run / "manifest.json").read_text())
    export = manifest["stages"]["export"]
    assert {e["format"] for e in export["gguf"] + export["onnx"]} == {2}
    for entry in export["gguf"]:  # as the earlier edgetune recorded its files: no format
        del entry["format"]
    (run / "manifest.json").write_text(json.dumps(manifest))
    # an edgetune that recorded the trained system prompt wrote every file as today's does
    same, out = invoke(recipe, "--no-gate")
    assert "ran nothing" in out, out
    del manifest["data"]["trained_system_prompt"]  # before it: files without the prompt
    (run / "manifest.json").write_text(json.dumps(manifest))
    again, out = invoke(recipe, "--no-gate")
    assert again.exit_code == 0 and "ran export, bench; skipped data, tune, merge" in out, out
    assert "export: gguf files made by an earlier edgetune" in " ".join(out.split())
    assert "export: onnx up to date, kept" in out
    export = json.loads((run / "manifest.json").read_text())["stages"]["export"]
    assert {e["format"] for e in export["gguf"] + export["onnx"]} == {2}
    settled, out = invoke(recipe, "--no-gate")
    assert "ran nothing" in out, out


def test_a_data_warning_the_data_stage_printed_is_not_printed_again_by_tune(tmp_path, tiny_model_dir):
    from conftest import chat_row, write_jsonl

    recipe = pipeline_recipe(tmp_path, tiny_model_dir)
    rows = [json.loads(line) for line in (tmp_path / "data.jsonl").read_text().splitlines()]
    rows[5] = chat_row("what ends a turn?", "ChatML writes <|im_end|> after each message")
    write_jsonl(tmp_path / "data.jsonl", rows)
    ran, out = invoke(recipe, "--until", "tune")
    assert ran.exit_code == 0, out
    assert out.count("the text of a special token") == 1, out
    manifest = json.loads((tmp_path / "runs" / "tiny" / "manifest.json").read_text())
    assert any("the text of a special token" in w for w in manifest["stages"]["tune"]["warnings"])


def test_a_format_is_kept_or_skipped_only_when_its_files_are_the_ones_the_recipe_makes(
    tmp_path, tiny_model_dir
):
    """A hand-run export can leave files the recipe would not make (no importance matrix), or drop
    the manifest's entry of a recipe type deleted by hand: neither is up to date."""
    recipe = pipeline_recipe(tmp_path, tiny_model_dir)
    run = tmp_path / "runs" / "tiny"
    first, out = invoke(recipe, "--until", "export")
    assert first.exit_code == 0, out
    for _ in range(2):
        plain = CliRunner().invoke(main, ["export", str(run), "--to", "gguf", "--imatrix", "off"])
        assert plain.exit_code == 0, plain.output
        if _ == 0:  # nothing changed in the recipe: its export is still not the one the files hold
            same, out = invoke(recipe, "--until", "export")
            assert same.exit_code == 0 and "ran export" in out and "export: up to date" not in out, out
    onnx_only, out = invoke(recipe, "--until", "export", "--set", "export.onnx.int4_block_size=32")
    assert onnx_only.exit_code == 0 and "ran export" in out, out
    assert "gguf up to date, kept" not in out and "quantising to q8_0 with the importance matrix" in out, out
    assert json.loads((run / "manifest.json").read_text())["stages"]["export"]["imatrix"]
    (run / "export" / "gguf" / "model-q8_0.gguf").unlink()
    f16 = CliRunner().invoke(main, ["export", str(run), "--to", "gguf", "--quant", "f16"])
    assert f16.exit_code == 0, f16.output
    mended, out = invoke(recipe, "--until", "export", "--set", "export.onnx.int4_block_size=32")
    assert mended.exit_code == 0 and "ran export" in out, out
    assert (run / "export" / "gguf" / "model-q8_0.gguf").is_file()


def test_an_interrupted_export_of_one_format_keeps_the_other_checked_one(
    tmp_path, tiny_model_dir, monkeypatch
):
    """Ctrl-C while the ONNX files are made again (only their settings changed): the GGUF files,
    checked and unchanged, had been quantised again by the next run too."""
    import edgetune.export.onnx_export as onnx_export

    recipe = pipeline_recipe(tmp_path, tiny_model_dir)
    first, out = invoke(recipe)
    assert first.exit_code == 0, out
    gguf = tmp_path / "runs" / "tiny" / "export" / "gguf" / "model-q8_0.gguf"
    made = gguf.stat().st_mtime_ns
    wider = ("--set", "export.onnx.quants=[fp32, int8]")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(onnx_export, "export_onnx", interrupted)
        stopped, out = invoke(recipe, *wider)
    assert stopped.exit_code == 130, out
    again, out = invoke(recipe, *wider)
    assert again.exit_code == 0 and "export: gguf up to date, kept" in out, out
    assert gguf.stat().st_mtime_ns == made
    assert (tmp_path / "runs" / "tiny" / "export" / "onnx" / "int8" / "model.onnx").is_file()
    # a setting both formats depend on: the GGUF is made again first, and kept when the ONNX is cut short
    both = (*wider, "--set", "export.parity_examples=3")
    with monkeypatch.context() as patch:
        patch.setattr(onnx_export, "export_onnx", interrupted)
        stopped, out = invoke(recipe, *both)
    assert stopped.exit_code == 130 and "gguf: converting" in out, out
    remade = gguf.stat().st_mtime_ns
    assert remade != made
    after, out = invoke(recipe, *both)
    assert after.exit_code == 0 and "export: gguf up to date, kept" in out, out
    assert gguf.stat().st_mtime_ns == remade and "onnx: fp32 written" in out


def test_a_recipe_without_a_name_goes_on_in_the_run_an_earlier_edgetune_made_for_it(tmp_path, tiny_model_dir):
    """Up to 2026-12-06 a recipe without `name` ran in runs/custom; named by its file since, its run
    would have been made again from scratch in runs/<file>."""
    recipe = pipeline_recipe(tmp_path, tiny_model_dir)
    text = recipe.read_text()
    assert "name: tiny\n" in text
    (tmp_path / "exp-a.yaml").write_text(text.replace("name: tiny\n", "name: custom\n"))
    first, out = invoke(tmp_path / "exp-a.yaml", "--until", "tune")
    assert first.exit_code == 0 and (tmp_path / "runs" / "custom" / "adapter").is_dir(), out
    (tmp_path / "exp-a.yaml").write_text(text.replace("name: tiny\n", ""))  # as such a recipe was written
    again, out = invoke(tmp_path / "exp-a.yaml", "--until", "tune")
    assert again.exit_code == 0 and "skipped data, tune" in out, out
    assert "this recipe's run, as an earlier edgetune named it; going on there" in out
    assert not (tmp_path / "runs" / "exp-a").exists()
    (tmp_path / "other.yaml").write_text(text.replace("name: tiny\n", ""))  # another file: its own run
    other, out = invoke(tmp_path / "other.yaml", "--until", "data")
    assert other.exit_code == 0 and (tmp_path / "runs" / "other").is_dir(), out
    # no run there for `edgetune export` or `bench` to take up: runs/latest stays on the tuned one
    assert (tmp_path / "runs" / "latest").resolve() == (tmp_path / "runs" / "custom").resolve()
    # two files of one name in two folders: the second is refused, not set against the first's run
    text = text.replace("train: data.jsonl", f"train: {tmp_path / 'data.jsonl'}")
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "exp-a.yaml").write_text(
            text.replace("name: tiny\n", "").replace("lr: 0.001", f"lr: {0.001 if folder == 'a' else 0.002}")
        )
    first_a, out = invoke(tmp_path / "a" / "exp-a.yaml", "--until", "tune")
    assert first_a.exit_code == 0 and (tmp_path / "runs" / "exp-a" / "adapter").is_dir(), out
    clash, out = invoke(tmp_path / "b" / "exp-a.yaml", "--until", "tune")
    assert clash.exit_code == 2 and "which holds the run of" in out and "give it a name" in out, out
    assert not (tmp_path / "runs" / "exp-a.previous").exists()


def test_a_name_yaml_reads_as_a_number_goes_on_in_the_run_an_earlier_edgetune_named_by_the_number(
    tmp_path, tiny_model_dir
):
    """`name: 1.10` named its run runs/1.1 up to 2026-12-07 (YAML 1.1 reads a number); kept as
    written since, the upgrade would have started the run again in runs/1.10, unsaid."""
    text = pipeline_recipe(tmp_path, tiny_model_dir).read_text()
    recipe = tmp_path / "ver.yaml"
    recipe.write_text(text.replace("name: tiny\n", "name: '1.1'\n"))  # the run as the earlier one named it
    first, out = invoke(recipe, "--until", "tune")
    assert first.exit_code == 0 and (tmp_path / "runs" / "1.1" / "adapter").is_dir(), out
    recipe.write_text(text.replace("name: tiny\n", "name: 1.10\n"))
    again, out = invoke(recipe, "--until", "tune")
    assert again.exit_code == 0 and "skipped data, tune" in out, out
    assert "runs/1.1: this recipe's run, as an earlier edgetune named it; going on there" in out
    assert not (tmp_path / "runs" / "1.10").exists()
    renamed, out = invoke(recipe, "--until", "data", "--set", "name=v2")  # a name given: its own run
    assert renamed.exit_code == 0 and (tmp_path / "runs" / "v2").is_dir(), out


def test_the_library_entry_points_take_run_directories_as_str(tmp_path, tiny_model_dir):
    """A program calling merge("runs/x"), bench, export, tune or run_pipeline with a str path (as
    check_dataset and open_chat take one) got AttributeError: 'str' object has no attribute
    'exists'; a str is now read as the Path it names."""
    from edgetune.bench.regate import regate_run
    from edgetune.bench.run import bench
    from edgetune.errors import InputError
    from edgetune.export.run import export
    from edgetune.merge import merge
    from edgetune.pipeline import run_pipeline
    from edgetune.tune.run import tune

    recipe = pipeline_recipe(tmp_path, tiny_model_dir)
    result = run_pipeline(str(recipe), [], str(tmp_path / "p"), until="data")
    assert result.run_dir == (tmp_path / "p").resolve() and result.ran == ["data"]
    for call in (merge, bench, export, regate_run):
        with pytest.raises(InputError, match="nowhere: run directory not found"):
            call(str(tmp_path / "nowhere"))
    with pytest.raises(InputError, match="recipe.yaml: a file; export takes a run directory"):
        export(str(recipe))
    with pytest.raises(InputError, match="recipe.yaml: not a directory; --out names"):
        export(str(tiny_model_dir), out=str(recipe / "export"))
    with pytest.raises(InputError, match="recipe.yaml: not a directory; --run-dir names"):
        tune(str(recipe), [], str(recipe / "run"))
