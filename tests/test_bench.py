"""edgetune bench on a tiny tuned run: every runtime behind one interface, the report contract,
gates that Make can trust."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from edgetune.cli import main

SMALL_BENCH = {
    "metric": "json_fields",
    "max_examples": 4,
    "max_new_tokens": 6,
    "kl_examples": 2,
    "few_shot_k": 1,
    "baseline_examples": 2,
    "latency_decode_tokens": 4,
    "latency_repeats": 1,
    "threads": 1,
}


@pytest.fixture(scope="module")
def benched(tiny_model_dir, tmp_path_factory):
    import os

    from test_tune import make_recipe

    from edgetune.export.run import export
    from edgetune.tune.run import tune

    tmp = tmp_path_factory.mktemp("bench")
    os.chdir(tmp)
    run = tune(str(make_recipe(tmp, tiny_model_dir, max_steps=2, eval_steps=2, save_steps=2))).run_dir
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["bench"].update(SMALL_BENCH)
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    export(run, ["gguf", "onnx"], ["q8_0", "fp32", "int8"])
    result = CliRunner().invoke(main, ["bench", str(run)])
    return run, result


def test_report_follows_the_contract(benched):
    run, result = benched
    assert result.exit_code == 0, result.output
    # stderr is no terminal here: each stage's progress is plain lines, no live bar drawn at the end
    assert "accuracy gguf/q8_0 4/4" in result.output
    assert not [line for line in result.output.splitlines() if line.startswith("accuracy") and "━" in line]
    report = json.loads((run / "bench" / "report.json").read_text())
    assert {"reference", "targets", "baselines", "forgetting"} <= set(report)
    names = [t["name"] for t in report["targets"]]
    assert names == ["torch/merged", "torch/adapter", "onnx/fp32", "onnx/int8", "gguf/q8_0"]
    keys = {
        "name",
        "format",
        "quant",
        "runtime",
        "device",
        "size_bytes",
        "task_metric",
        "retention",
        "ppl",
        "kld_mean",
        "top1_agreement",
        "load_s",
        "ttft_ms",
        "prefill_tok_s",
        "decode_tok_s",
        "peak_rss_mb",
        "gate",
    }
    for t in report["targets"]:
        assert keys <= set(t), keys - set(t)
        assert t["decode_tok_s"] > 0 and t["peak_rss_mb"] > 0 and t["ttft_ms"] > 0
        assert t["task_metric"]["name"] == "json_fields"
        assert t["peak_vram_mb"] is None  # CPU targets hold no GPU memory
    by = {t["name"]: t for t in report["targets"]}
    # each ONNX folder timed in onnxruntime-genai too, in a process of its own; the others are not
    assert [t["name"] for t in report["targets"] if "genai" in t] == ["onnx/fp32", "onnx/int8"]
    for t in (by["onnx/fp32"], by["onnx/int8"]):
        assert t["genai"]["decode_tok_s"] > 0 and t["genai"]["ttft_ms"] > 0 and t["genai"]["peak_rss_mb"] > 0
    answered = len(by["torch/merged"]["scores"])
    assert answered > 0 and all(len(t["scores"]) == answered for t in report["targets"])
    ids = report["reference"]["example_ids"]  # which example each score is, for --compare
    assert len(ids) == answered == len(set(ids)) and all(len(i) == 16 for i in ids)
    # an interval exactly where retention is defined (the tiny model scores 0 here, so none: the
    # intervals themselves are checked on known scores in test_attach_intervals_pairs_each_target...)
    assert all((t["retention"] is None) == (t["retention_interval"] is None) for t in report["targets"])
    assert by["onnx/fp32"]["scores"] == by["torch/merged"]["scores"]  # the same answers, example by example
    assert (
        report["gate_rule"]["retention_evidence"] == "measured" and report["gate_rule"]["confidence"] == 0.95
    )
    # the same model through different runtimes gives the same numbers
    assert by["torch/merged"]["kld_mean"] == 0.0 and by["torch/merged"]["kl_interval"] is None
    assert all(k >= 0 for t in report["targets"] for k in t["kl_scores"] or [])  # a KL is never negative
    for t in report["targets"][1:]:  # the mean KL is the mean of the per-example KL, inside its interval
        assert len(t["kl_scores"]) == 2 and t["kld_mean"] == pytest.approx(sum(t["kl_scores"]) / 2)
        assert t["kl_interval"] is None and t["kl_confidence"] == 0.95  # 2 examples: too few for one
    # which example each KL is, for --compare: the first kl_examples cases
    assert len(report["reference"]["kl_example_ids"]) == 2 and set(
        report["reference"]["kl_example_ids"]
    ) <= set(ids)
    # each target's own process: llama.cpp does not carry torch's memory (nor the parent's)
    assert by["gguf/q8_0"]["peak_rss_mb"] < by["torch/merged"]["peak_rss_mb"]
    assert by["onnx/fp32"]["kld_mean"] < 1e-6 and by["onnx/fp32"]["top1_agreement"] == 1.0
    assert by["torch/adapter"]["kld_mean"] < 1e-6
    assert by["onnx/fp32"]["ppl"] == pytest.approx(by["torch/merged"]["ppl"], rel=1e-4)
    assert by["gguf/q8_0"]["ppl"] == pytest.approx(by["torch/merged"]["ppl"], rel=0.05)
    assert by["onnx/fp32"]["task_metric"]["value"] == by["torch/merged"]["task_metric"]["value"]
    assert {"zero_shot", "few_shot_1", "similar_shot_1"} == set(report["baselines"])
    assert report["baselines"]["few_shot_1"]["extra_prompt_tokens"] > 0
    assert report["baselines"]["similar_shot_1"]["extra_prompt_tokens"] > 0
    zero = report["baselines"]["zero_shot"]
    assert zero["examples"] == 2 and zero["tuned_on_these"] is not None
    assert isinstance(report["tuning_beats_prompting"], bool)
    assert isinstance(report["tuning_beats_prompting_shown"], bool)
    difference = zero["tuned_minus_baseline"]
    assert difference["interval"] is None and difference["confidence"] == 0.95  # 2 examples: too few
    assert report["tuning_beats_prompting_shown"] is False
    assert difference["mean"] == pytest.approx(zero["tuned_on_these"] - zero["task_metric"]["value"])
    assert report["forgetting"]["ppl_base"] > 0 and report["forgetting"]["kl_base_tuned"] >= 0
    assert report["machine"]["bandwidth_gb_s"] > 0
    md = (run / "bench" / "report.md").read_text()
    assert (
        "| genai TTFT | genai decode |" in md
        and "| gguf/q8_0 | cpu |" in md
        and "few shot 1" in md
        and "similar shot 1" in md
        and "VRAM" not in md
    )
    assert "No interval where a figure rests on fewer than 10 examples (here 2)" in md
    assert f"(difference {difference['mean']:+.3f}, no interval)" in md
    assert (run / "bench" / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((run / "manifest.json").read_text())["stages"]["bench"]["status"] == "done"


def test_gates_fail_with_exit_3_and_pick_prints_the_smallest_passing_file(benched):
    run, _ = benched
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["bench"].update({"baselines": False, "forgetting": False, "adapter_target": False})
    recipe["bench"]["gates"] = {"min_decode_tok_s": 1e9}
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    failed = CliRunner().invoke(main, ["bench", str(run), "--gate"])
    assert failed.exit_code == 3
    for name in ("onnx/fp32", "onnx/int8", "gguf/q8_0"):
        assert f"{name} (cpu): decode" in failed.output
    recipe["bench"]["gates"] = {"max_kl": 1.0}
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    picked = CliRunner().invoke(main, ["bench", str(run), "--pick"])
    assert picked.exit_code == 0, picked.output
    report = json.loads((run / "bench" / "report.json").read_text())
    smallest = min((t for t in report["targets"] if t["format"] != "torch"), key=lambda t: t["size_bytes"])
    assert picked.output.strip().splitlines()[-1] == smallest["path"]
    assert all(t["gate"] == "pass" for t in report["targets"] if t["format"] != "torch")
    # only the smallest file is small enough: --pick alone ships it, --pick --gate also exits 3
    recipe["bench"]["gates"] = {"max_kl": 1.0, "max_size_mb": smallest["size_bytes"] / 1e6 * 1.01}
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    picked = CliRunner().invoke(main, ["bench", str(run), "--regate", "--pick"])
    assert picked.exit_code == 0 and picked.stdout.strip() == smallest["path"], picked.output
    both = CliRunner().invoke(main, ["bench", str(run), "--regate", "--pick", "--gate"])
    assert both.exit_code == 3 and both.stdout.strip() == smallest["path"], both.output
    assert "bench gates failed" in both.stderr and "size" in both.stderr


def test_regate_applies_the_recipe_gates_to_the_measured_report_in_seconds(benched):
    run, _ = benched
    report_path = run / "bench" / "report.json"
    measured = json.loads(report_path.read_text())
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["bench"]["gates"] = {"max_size_mb": 0.001}
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    failed = CliRunner().invoke(main, ["bench", str(run), "--regate", "--gate"])
    assert failed.exit_code == 3 and "gguf/q8_0 (cpu): size" in failed.output
    regated = json.loads(report_path.read_text())
    assert {t["gate"] for t in regated["targets"] if t["format"] != "torch"} == {"fail"}
    for before, after in zip(measured["targets"], regated["targets"]):  # nothing was measured again
        assert (after["decode_tok_s"], after["scores"]) == (before["decode_tok_s"], before["scores"])
    recipe["bench"]["gates"] = {"retention_evidence": "significant", "min_retention": {"*": 0.5}}
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    again = CliRunner().invoke(main, ["bench", str(run), "--regate", "--gate"])
    # the tiny model scores 0 on json_fields: retention is unknown, and a retention gate says so
    assert again.exit_code == 3 and "retention unknown" in again.output
    del recipe["bench"]["gates"]
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert CliRunner().invoke(main, ["bench", str(run), "--regate", "--gate"]).exit_code == 0
    (run / "bench" / "report.json").write_text('{"targets": [')
    both = CliRunner().invoke(main, ["bench", str(run), "--regate", "--device", "cuda"])
    assert both.exit_code == 2 and "--regate measures nothing" in both.output
    broken = CliRunner().invoke(main, ["bench", str(run), "--regate"])
    assert broken.exit_code == 2 and "report.json: line 1: not JSON" in broken.output
    files = {name: (run / "bench" / name).read_bytes() for name in ("report.md", "report.png")}
    incomplete = {k: v for k, v in measured.items() if k != "machine"}
    incomplete["gate_rule"] = {}  # a changed verdict: the files would be rewritten
    report_path.write_text(json.dumps(incomplete))
    broken = CliRunner().invoke(main, ["bench", str(run), "--regate"])
    assert (
        broken.exit_code == 2
        and "not an edgetune bench report (missing or malformed 'machine')" in broken.output
    )
    assert json.loads(report_path.read_text()) == incomplete  # nothing half-written
    assert files == {name: (run / "bench" / name).read_bytes() for name in files}
    report_path.write_text(json.dumps(measured))


def test_regate_recomputes_every_interval_from_the_stored_scores(benched):
    """The tiny model scores 0 on json_fields, so the measured report has no intervals to speak of:
    give its targets and baselines known per-example scores and re-gate."""
    import random

    from edgetune.bench.confidence import difference_interval, retention_interval
    from edgetune.bench.regate import regate_run
    from edgetune.bench.settings import GatesConfig

    run, _ = benched
    report_path = run / "bench" / "report.json"
    measured = report_path.read_text()
    report = json.loads(measured)
    n = 6 * len(report["targets"][0]["scores"])  # enough examples for an interval (confidence.MIN_EXAMPLES)
    rng = random.Random(3)
    ref = [rng.choice([0.6, 0.8, 1.0]) for _ in range(n)]
    for i, t in enumerate(report["targets"]):
        t["scores"] = ref if i == 0 else [s - 0.2 * (j % (i + 1) == 0) for j, s in enumerate(ref)]
        t["retention"] = sum(t["scores"]) / sum(ref)
    k = n // 2  # a zero-shot baseline that scores 0 on the first half (an earlier test benched without)
    assert k >= 10
    report["baselines"] = {
        "zero_shot": {
            "task_metric": {"name": "json_fields", "value": 0.0},
            "examples": k,
            "scores": [0.0] * k,
        }
    }
    report["baselines"]["zero_shot"]["tuned_on_these"] = sum(ref[:k]) / k
    report_path.write_text(json.dumps(report))
    try:
        regated, changed = regate_run(run, GatesConfig(min_retention={"*": 0.5}, confidence=0.9))
        assert changed
        for t in regated["targets"][1:]:
            assert t["retention_interval"] == list(retention_interval(ref, t["scores"], 0.9))
            assert t["retention_confidence"] == 0.9 and t["gate"] in ("pass", "-")
        zero = regated["baselines"]["zero_shot"]
        want = difference_interval(ref[: zero["examples"]], zero["scores"], 0.9)
        assert zero["tuned_minus_baseline"]["interval"] == list(want) and want[0] > 0
        assert regated["tuning_beats_prompting_shown"] is True
        on_disk = json.loads(report_path.read_text())
        assert on_disk["gate_rule"]["confidence"] == 0.9 and on_disk["gate_rule"]["min_retention"] == {
            "*": 0.5
        }
        # the same gates again: nothing to change, nothing rewritten
        assert regate_run(run, GatesConfig(min_retention={"*": 0.5}, confidence=0.9))[1] is False
    finally:
        report_path.write_text(measured)


def test_a_kl_that_is_not_finite_is_written_as_strict_json_and_still_fails_its_gate(benched):
    """An export whose distributions overflow: its KL is inf, one example's NaN. report.json had
    held Infinity and NaN, which jq and JavaScript refuse; the gate must still see them."""
    from edgetune.rundir import atomic_write_json

    run, _ = benched
    report_path = run / "bench" / "report.json"
    measured = report_path.read_text()
    report = json.loads(measured)
    q8 = next(t for t in report["targets"] if t["name"] == "gguf/q8_0")
    q8["kld_mean"], q8["kl_scores"][1] = float("inf"), float("nan")
    atomic_write_json(report_path, report)
    recipe_path = run / "recipe.yaml"
    recipe_text = recipe_path.read_text()
    recipe = yaml.safe_load(recipe_text)
    recipe["bench"]["gates"] = {"max_kl": 1.0}
    recipe_path.write_text(yaml.safe_dump(recipe))

    def strict(text):
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in report.json"))

    try:
        on_disk = next(t for t in strict(report_path.read_text())["targets"] if t["name"] == "gguf/q8_0")
        assert on_disk["kld_mean"] is None and on_disk["kld_mean_not_finite"] == "inf"
        assert on_disk["kl_scores"][1] is None and on_disk["kl_scores_not_finite"] == {"1": "nan"}
        result = CliRunner().invoke(main, ["bench", str(run), "--regate", "--gate"])
        assert result.exit_code == 3 and "gguf/q8_0 (cpu): KL inf (not finite" in result.output
        regated = strict(report_path.read_text())
        assert next(t for t in regated["targets"] if t["name"] == "gguf/q8_0")["gate"] == "fail"
        assert "| gguf/q8_0 |" in (run / "bench" / "report.md").read_text()
    finally:
        report_path.write_text(measured)
        recipe_path.write_text(recipe_text)


def test_strict_json_puts_back_every_float_it_could_not_write():
    import math

    from edgetune import strict_json

    value = {"a": float("-inf"), "b": [1.0, float("nan"), float("inf")], "c": {"d": float("nan")}, "e": "nan"}
    text = strict_json.dumps(value)
    assert "NaN" not in text and "Infinity" not in text
    back = strict_json.restore(json.loads(text))
    assert set(back) == set(value) and back["a"] == float("-inf") and back["e"] == "nan"
    assert back["b"][0] == 1.0 and math.isnan(back["b"][1]) and back["b"][2] == float("inf")
    assert math.isnan(back["c"]["d"])
    somebody_else = {"x_not_finite": True, "y": None, "y_not_finite": "bogus"}
    assert strict_json.restore(dict(somebody_else)) == {"x_not_finite": True, "y": None}


def test_a_run_compared_with_its_twin_changes_nowhere(benched, tmp_path):
    import shutil

    run, _ = benched
    itself = CliRunner().invoke(main, ["bench", str(run), "--compare", str(run)])
    assert itself.exit_code == 2 and "that is the run itself" in itself.output  # a slip, not a comparison
    twin = tmp_path / "twin"
    shutil.copytree(run / "bench", twin / "bench")
    result = CliRunner().invoke(main, ["bench", str(run), "--compare", str(twin)])
    assert result.exit_code == 0, result.output
    report = json.loads((run / "bench" / "report.json").read_text())
    scored = sum(bool(t.get("scores")) for t in report["targets"])  # tests above may take some away
    with_kl = sum(bool(t.get("kl_scores")) for t in report["targets"][1:])  # the KL table's rows
    assert scored >= 4 and with_kl >= 3 and "KL to its run's merged model" in result.output
    # 4 benched examples: too few for a verdict either way (a twin on 10 or more is "within noise",
    # tests/test_compare.py), and a gate cannot pass having told nothing
    assert result.output.count("too few examples") == scored + with_kl and "+0.000" in result.output
    assert "│ better" not in result.output and "│ worse" not in result.output
    gated = CliRunner().invoke(main, ["bench", str(run), "--compare", str(twin), "--gate"])
    assert gated.exit_code == 3 and "the runs share 4 scored examples" in gated.output, gated.output


def test_runners_agree_on_the_next_token_logits(benched):
    import numpy as np

    from edgetune.bench.runners import LlamaRunner, OnnxRunner, Target, TorchRunner, greedy

    run, _ = benched
    ids = [5, 17, 33, 80, 12, 9]
    merged = Target("torch/merged", "torch", "fp32", "torch", "cpu", run / "merged")
    onnx = Target("onnx/fp32", "onnx", "fp32", "onnxruntime", "cpu", run / "export" / "onnx" / "fp32")
    gguf = Target(
        "gguf/q8_0", "gguf", "q8_0", "llama.cpp", "cpu", run / "export" / "gguf" / "model-q8_0.gguf"
    )
    torch_runner = TorchRunner(merged)
    full = torch_runner.logits(ids)
    np.testing.assert_allclose(torch_runner.prefill(ids), full[-1], atol=1e-4)
    np.testing.assert_allclose(OnnxRunner(onnx).prefill(ids), full[-1], atol=1e-4)
    # llama.cpp without logits_all (how latency and chat load it) must still give the last logits
    lean, rich = LlamaRunner(gguf, logits_all=False), LlamaRunner(gguf, logits_all=True)
    np.testing.assert_allclose(lean.prefill(ids), rich.logits(ids)[-1], atol=1e-5)
    assert np.corrcoef(lean.prefill(ids), full[-1])[0, 1] > 0.99
    assert greedy(lean, ids, [], 8) == greedy(rich, ids, [], 8)
    # stepping with the cache equals recomputing the whole sequence
    step = torch_runner.prefill(ids)
    nxt = int(np.argmax(step))
    np.testing.assert_allclose(torch_runner.step(nxt), torch_runner.logits(ids + [nxt])[-1], atol=1e-4)


def test_cuda_targets_whose_runtime_cannot_use_cuda_are_listed_as_skipped(benched):
    """On this CPU machine: onnxruntime has no CUDA provider (and the probe that catches a provider
    listed but unable to start says so too), llama-cpp-python is a CPU build."""
    import warnings

    from edgetune.bench import targets as bench_targets
    from edgetune.config import load_recipe

    run, _ = benched
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Specified provider 'CUDAExecutionProvider' is not available"
        assert "did not start" in bench_targets._ort_cuda_problem()
    skipped: list[dict] = []
    recipe = load_recipe(str(run / "recipe.yaml"))
    targets = bench_targets.discover_targets(run, ["cpu", "cuda"], recipe, skipped)
    on_cpu = [t.name for t in targets if t.device == "cpu"]
    on_cuda = [t.name for t in targets if t.device == "cuda"]
    assert on_cuda == [n for n in on_cpu if n.startswith("torch/")] and "torch/merged" in on_cuda
    assert sorted(s["name"] for s in skipped) == sorted(n for n in on_cpu if not n.startswith("torch/"))
    assert {"onnx/fp32", "onnx/int8", "gguf/q8_0"} <= {s["name"] for s in skipped}
    assert all(s["reason"] for s in skipped)


def test_two_gguf_files_of_one_type_get_two_target_names(benched):
    """A copy of the q8_0 file beside it: both had been named gguf/q8_0 in the report and --compare."""
    import shutil

    from edgetune.bench.targets import discover_targets
    from edgetune.config import load_recipe

    run, _ = benched
    copy = run / "export" / "gguf" / "mine-q8_0.gguf"
    shutil.copy(run / "export" / "gguf" / "model-q8_0.gguf", copy)
    try:
        targets = discover_targets(run, ["cpu"], load_recipe(str(run / "recipe.yaml")))
    finally:
        copy.unlink()
    gguf = {t.name: t for t in targets if t.format == "gguf"}
    assert set(gguf) == {"gguf/q8_0", "gguf/mine-q8_0"}
    assert gguf["gguf/mine-q8_0"].quant == "q8_0" and gguf["gguf/mine-q8_0"].path == copy
    # one spelling alone keeps the type's name (a report compared with an older one finds it);
    # beside edgetune's own spelling it is named by its file
    own = run / "export" / "gguf" / "model-q8_0.gguf"
    upper = own.with_name("model-Q8_0.gguf")
    own.rename(upper)
    try:
        alone = discover_targets(run, ["cpu"], load_recipe(str(run / "recipe.yaml")))
        assert [t.name for t in alone if t.format == "gguf"] == ["gguf/q8_0"]
        shutil.copy(upper, own)
        both = discover_targets(run, ["cpu"], load_recipe(str(run / "recipe.yaml")))
        assert {t.name: t.path.name for t in both if t.format == "gguf"} == {
            "gguf/q8_0": "model-q8_0.gguf",
            "gguf/model-Q8_0": "model-Q8_0.gguf",
        }
    finally:
        if own.exists():
            upper.unlink()
        else:
            upper.rename(own)


def test_few_shot_prompts_stay_with_their_own_answers_when_an_example_is_dropped(tiny_tokenizer):
    """build_cases drops examples too long for max_seq_len; every few-shot prompt must still be
    scored against the answer of the example it was built from."""
    from edgetune.bench.accuracy import build_cases
    from edgetune.bench.prompting import few_shot_cases
    from edgetune.data.render import Renderer
    from edgetune.data.rows import Example

    def chat(user, answer):
        return Example("messages", messages=(("user", user), ("assistant", answer)), source="t.jsonl:1")

    renderer = Renderer(tiny_tokenizer, max_seq_len=64)
    examples = [chat("router " * 80, "dropped"), chat("first", "A1"), chat("second", "A2")]
    cases = build_cases(renderer, examples)
    assert [c.reference for c in cases] == ["A1", "A2"]
    shots = few_shot_cases(renderer, [chat("shot", "S")], cases)
    for shot, case in zip(shots, cases):
        prompt = tiny_tokenizer.decode(shot.prompt_ids)
        assert shot.reference == case.reference
        assert prompt.endswith(tiny_tokenizer.decode(case.prompt_ids)) and "shot" in prompt


def test_a_gate_on_a_metric_that_was_not_measured_fails():
    from edgetune.bench.gates import gate_failures
    from edgetune.bench.settings import GatesConfig

    target = {"quant": "q8_0", "retention": None, "kld_mean": None, "decode_tok_s": None, "size_bytes": 10**6}
    assert gate_failures(target, GatesConfig()) == []
    gates = GatesConfig(min_retention={"q8_0": 0.99}, max_kl=0.05, min_decode_tok_s=10.0)
    failures = gate_failures(target, gates)
    assert len(failures) == 3 and any("KL not measured" in f for f in failures)
    # a size gate under 1 MB says the file's size, not "0 MB > 0.001 MB"
    tiny = {**target, "size_bytes": 123_456}
    assert gate_failures(tiny, GatesConfig(max_size_mb=0.001)) == ["size 0.12 MB > 0.001 MB"]
    assert gate_failures({**target, "size_bytes": 145_200_000}, GatesConfig(max_size_mb=100)) == [
        "size 145 MB > 100 MB"
    ]


class FakeNvml:
    """NVML's calls as edgetune uses them, over numbers the test sets (no GPU here)."""

    def __init__(self, used, processes=(), per_process_fails=False):
        self.used, self.processes, self.per_process_fails = used, list(processes), per_process_fails

    def nvmlInit(self):
        pass

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetMemoryInfo(self, handle):
        return type("Memory", (), {"used": self.used})()

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        if self.per_process_fails:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        return [type("Proc", (), {"pid": pid, "usedGpuMemory": used})() for pid, used in self.processes]


def test_gpu_memory_is_the_process_own_count_else_the_growth_since_start():
    import os

    from edgetune.bench.vram import VramProbe

    nvml = FakeNvml(used=1000, processes=[(os.getpid() + 1, 50)])
    probe = VramProbe(nvml)
    nvml.used = 1800  # our pid is not among the driver's processes (a container): growth since start
    probe.sample()
    nvml.used = 1500
    probe.sample()
    assert probe.peak_bytes == 800  # the peak of the samples, not the last one
    nvml.processes.append((os.getpid(), 640))
    assert probe.held_bytes() == 640  # the driver's own count for this process wins
    nvml.per_process_fails = True
    assert probe.held_bytes() == 500

    class NoDriver(FakeNvml):
        def nvmlInit(self):
            raise OSError("libnvidia-ml.so.1: cannot open shared object file")

    nothing = VramProbe(NoDriver(used=0))
    nothing.sample()
    assert nothing.peak_bytes is None and nothing.held_bytes() is None


def test_attach_intervals_pairs_each_target_and_baseline_with_the_reference():
    from edgetune.bench.confidence import attach_intervals, difference_interval, retention_interval

    ref, q8 = [1.0, 0.8, 0.6, 1.0] * 10, [1.0, 0.6, 0.6, 1.0] * 10
    report = {
        "reference": {"name": "torch/merged"},
        "targets": [
            {"name": "torch/merged", "retention": 1.0, "scores": ref},
            {"name": "gguf/q8_0", "retention": 32 / 34, "scores": q8},
            {"name": "gguf/old", "retention": 0.9},  # benched before scores were kept: left alone
        ],
        "baselines": {"zero_shot": {"examples": 10, "scores": [0.0] * 10}},
    }
    attach_intervals(report, 0.9)
    merged, q8_entry, old = report["targets"]
    assert merged["retention_interval"] == [1.0, 1.0]
    assert q8_entry["retention_interval"] == list(retention_interval(ref, q8, 0.9))
    assert q8_entry["retention_confidence"] == 0.9 and "retention_interval" not in old
    gain = report["baselines"]["zero_shot"]["tuned_minus_baseline"]
    assert gain["interval"] == list(difference_interval(ref[:10], [0.0] * 10, 0.9))
    assert (
        gain["mean"] == pytest.approx(sum(ref[:10]) / 10) and report["tuning_beats_prompting_shown"] is True
    )
    report["reference"]["name"] = "torch/missing"
    with pytest.raises(ValueError, match="not among"):
        attach_intervals(report, 0.9)


def test_the_table_gets_a_vram_column_when_a_target_ran_on_cuda():
    from edgetune.bench.report import columns, row_cells

    def target(device, vram):
        return {"name": "gguf/q8_0", "device": device, "size_bytes": 10**6, "task_metric": {"value": 0.5},
                "peak_rss_mb": 300.0, "peak_vram_mb": vram, "gate": "pass"}  # fmt: skip

    cpu, cuda = target("cpu", None), target("cuda", 412.4)
    assert "VRAM" not in columns({"targets": [cpu]})
    cols = columns({"targets": [cpu, cuda]})
    assert cols.index("VRAM") == cols.index("RSS") + 1
    assert len(row_cells(cuda, cols)) == len(cols)
    assert row_cells(cuda, cols)[cols.index("VRAM")] == "412 MB"
    assert row_cells(cpu, cols)[cols.index("VRAM")] == "-"
    assert "interval" not in cols
    cpu.update(retention=0.985, retention_interval=[0.9612, 1.0])
    cols = columns({"targets": [cpu, cuda]})
    assert cols.index("interval") == cols.index("retention") + 1
    assert row_cells(cpu, cols)[cols.index("interval")] == "96.1%-100.0%"
    assert row_cells(cuda, cols)[cols.index("interval")] == "-"


def test_the_interval_note_counts_the_examples_the_interval_pairs():
    """12 held-out rows, 2 of them text rows (perplexity only): the interval pairs 10 scores."""
    from edgetune.bench.report import _interval_lines

    scores = [1.0] * 10
    report = {
        "reference": {"name": "torch/merged", "examples": 12},
        "gate_rule": {},
        "targets": [
            {
                "name": "torch/merged",
                "scores": scores,
                "retention_interval": [1.0, 1.0],
                "retention_confidence": 0.95,
            },
            {
                "name": "gguf/q8_0",
                "scores": scores,
                "retention_interval": [0.9, 1.0],
                "retention_confidence": 0.95,
            },
        ],
    }
    text = "\n".join(_interval_lines(report))
    assert "over the 10 scored examples" in text and "12" not in text


def test_a_cuda_target_that_fails_here_is_listed_as_skipped_and_the_rest_stands(benched):
    """On this CPU machine a torch CUDA target fails for real when it opens; bench keeps every other
    row and says why. The same failure on the CPU stops bench."""
    from edgetune.bench.latency import measure
    from edgetune.bench.run import measure_each
    from edgetune.bench.runners import Target, open_runner

    run, _ = benched
    merged = run / "merged"
    cpu = Target("torch/merged", "torch", "fp32", "torch", "cpu", merged)
    cuda = Target("torch/merged", "torch", "fp32", "torch", "cuda", merged)
    skipped: list[dict] = []
    done = measure_each([cuda, cpu], lambda t: open_runner(t, 1), skipped)
    assert [t.device for t, _ in done] == ["cpu"]
    assert skipped == [{"name": "torch/merged", "device": "cuda",
                        "reason": "failed on this machine: ModelError: torch here has no CUDA device"}]  # fmt: skip
    # the latency child fails the same way, in its own process
    failed: list[dict] = []
    assert measure_each([cuda], lambda t: measure(t, [1, 2, 3], 2, 1, 1), failed) == []
    assert "no CUDA device" in failed[0]["reason"]
    broken = Target("torch/merged", "torch", "fp32", "torch", "cpu", run / "no-such-dir")
    with pytest.raises(Exception):  # noqa: B017 - on the CPU any failure stops bench
        measure_each([broken], lambda t: open_runner(t, 1), [])


def test_held_out_examples_that_are_all_too_long_are_refused_before_any_target_runs(benched, tmp_path):
    import shutil

    from conftest import chat_row, write_jsonl

    run, _ = benched
    copy = tmp_path / "copy"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("bench"))
    long = write_jsonl(tmp_path / "long.jsonl", [chat_row("word " * 300 + str(i), "{}") for i in range(5)])
    recipe = yaml.safe_load((copy / "recipe.yaml").read_text())
    recipe["data"]["test"] = str(long)
    (copy / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(main, ["bench", str(copy)])
    assert result.exit_code == 2 and "every held-out example bench would use is longer" in result.output
    assert not (copy / "bench").exists()


def test_gates_that_checked_nothing_fail_instead_of_passing():
    from edgetune.bench.gates import pick, raise_on_failed_gates
    from edgetune.errors import GateFailed

    merged = {
        "name": "torch/merged",
        "format": "torch",
        "quant": "fp32",
        "device": "cpu",
        "gate": "reference",
    }
    q8 = {
        "name": "gguf/q8_0",
        "format": "gguf",
        "quant": "q8_0",
        "device": "cpu",
        "gate": "pass",
        "size_bytes": 9,
    }
    no_exports = {"targets": [merged], "gate_rule": {"min_retention": {"*": 0.99}}}
    for check in (raise_on_failed_gates, pick):
        with pytest.raises(GateFailed, match="no exported target to gate"):
            check(no_exports)
    other_quant = {"targets": [merged, q8], "gate_rule": {"min_retention": {"Q4_K_M": 0.99}}}
    with pytest.raises(GateFailed, match="min_retention.Q4_K_M: no Q4_K_M target was benched"):
        raise_on_failed_gates(other_quant)
    with pytest.raises(GateFailed, match="nothing to pick"):
        pick(other_quant)
    fine = {"targets": [merged, q8], "gate_rule": {"min_retention": {"q8_0": 0.99, "*": 0.9}}}
    raise_on_failed_gates(fine)
    assert pick(fine) is q8


def test_a_tuned_model_that_forgot_or_loses_to_prompting_fails_every_file_it_shipped(capsys):
    """lr 1e-2 wrecked the demo (json_fields 0.05, perplexity 53x the base's, few-shot prompting of the
    base scored 0.22): every gate passed, as each file kept 100% of the wrecked model's score, and
    --pick chose its Q8_0; report.md alone said "does NOT beat prompting"."""
    from dataclasses import replace

    from rich.console import Console

    from edgetune.bench.gates import apply_gates, pick, raise_on_failed_gates
    from edgetune.bench.report import print_findings
    from edgetune.bench.settings import GatesConfig
    from edgetune.config import load_recipe
    from edgetune.errors import ConfigError, GateFailed

    def report():
        q8 = {"name": "gguf/q8_0", "format": "gguf", "quant": "q8_0", "device": "cpu", "size_bytes": 9,
              "retention": 1.0, "task_metric": {"name": "json_fields", "value": 0.05}}  # fmt: skip
        merged = {"name": "torch/merged", "format": "torch", "quant": "fp32", "device": "cpu"}
        return {
            "targets": [merged, q8],
            "reference": {"metric": "json_fields"},
            "baselines": {
                "zero_shot": {"task_metric": {"value": 0.0}, "tuned_on_these": 0.05, "examples": 12},
                "few_shot_2": {"task_metric": {"value": 0.217}, "tuned_on_these": 0.05, "examples": 12},
            },
            "tuning_beats_prompting": False,
            "forgetting": {"ppl_ratio": 53.0, "warnings": ["general perplexity rose 53.00x > 1.25x"]},
        }

    retention = GatesConfig(min_retention={"q8_0": 0.99})
    passed = report()
    apply_gates(passed, retention)
    assert pick(passed)["name"] == "gguf/q8_0"  # what every gate said before
    for gates, why in (
        (replace(retention, beats_prompting=True), "does not beat prompting its base (few shot 2 scores 0.217 against 0.050)"),
        (replace(retention, max_perplexity_ratio=1.25), "forgetting: general perplexity 53.00x the base's > 1.25x"),
        (GatesConfig(min_metric=0.5), "json_fields 0.050 < 0.5"),
    ):  # fmt: skip
        wrecked = report()
        apply_gates(wrecked, gates)
        assert wrecked["targets"][1]["gate"] == "fail" and why in wrecked["targets"][1]["gate_failures"][-1]
        with pytest.raises(GateFailed, match="no exported artifact passes every gate"):
            pick(wrecked)
    zero = report()  # a tuned model that learned nothing: not each file's retention to blame
    zero["reference"]["value"], zero["targets"][1]["retention"] = 0.0, None
    apply_gates(zero, retention)
    assert zero["targets"][1]["gate_failures"] == [
        "retention unknown: the tuned model itself scores 0 on the task, so no file can keep any of it "
        "(its answers are in report.md)"
    ]
    wrecked = report()
    apply_gates(wrecked, replace(retention, beats_prompting=True, max_perplexity_ratio=1.25))
    with pytest.raises(GateFailed) as failed:
        raise_on_failed_gates({**wrecked, "targets": wrecked["targets"] * 3})  # three files: said once
    assert str(failed.value).count("does not beat prompting") == 1
    assert str(failed.value).startswith("bench gates failed: the tuned model does not beat")
    unmeasured = {**report(), "tuning_beats_prompting": None, "forgetting": None}
    apply_gates(
        unmeasured, GatesConfig(min_retention={"*": 0.9}, beats_prompting=True, max_perplexity_ratio=2)
    )
    assert len(unmeasured["targets"][1]["gate_failures"]) == 2  # nothing measured passes nothing
    with pytest.raises(ConfigError, match="beats_prompting: needs bench.baselines"):
        load_recipe("demo", ["bench.baselines=false"])
    with pytest.raises(ConfigError, match="max_perplexity_ratio: needs bench.forgetting"):
        load_recipe("demo", ["bench.forgetting=false"])
    # gates on what is not measured failed only at the end of `edgetune run`, after the whole pipeline
    with pytest.raises(ConfigError, match="max_kl: needs bench.kl_examples of at least 1"):
        load_recipe("demo", ["bench.gates.max_kl=0.5", "bench.kl_examples=0"], new_run=True)
    with pytest.raises(ConfigError, match="min_decode_tok_s: needs bench.latency"):
        load_recipe("demo", ["bench.gates.min_decode_tok_s=1", "bench.latency=false"], new_run=True)
    # nor gates no sample of this size can prove: the demo's 90 examples show at most 0.967
    with pytest.raises(ConfigError, match="q8_0: 0.99 cannot be proven on bench.max_examples 90") as proven:
        load_recipe("demo", ["bench.gates.retention_evidence=proven"], new_run=True)
    assert "at least 300 examples prove it" in str(proven.value)
    load_recipe("demo", ["bench.gates.retention_evidence=proven", "bench.max_examples=300"], new_run=True)
    with pytest.raises(ConfigError, match="kl_evidence: proven needs bench.kl_examples of at least 10"):
        sets = ["bench.gates.kl_evidence=proven", "bench.gates.max_kl=0.5", "bench.kl_examples=9"]
        load_recipe("demo", sets, new_run=True)
    load_recipe("demo", sets)  # a run saved with them still loads: its files can be chatted with
    # and the terminal says it, not report.md alone
    out, err = Console(width=300), Console(width=300, stderr=True)
    print_findings(report(), out, err)
    said = capsys.readouterr()
    assert "base model few shot 2: json_fields 0.217 against 0.050 for the tuned model" in said.out
    assert (
        "warning: fine-tuning does NOT beat 2-shot prompting of its base on this task (it beats zero-shot)"
        in said.err
    )
    assert "warning: forgetting: general perplexity rose 53.00x" in said.err


def test_pick_takes_only_a_file_whose_answers_a_gate_checked():
    """A size or speed gate passes a file however damaged: the smallest such file must not be picked."""
    from edgetune.bench.gates import pick, raise_on_failed_gates
    from edgetune.errors import GateFailed

    def target(quant, size):
        return {"name": f"gguf/{quant}", "format": "gguf", "quant": quant, "gate": "pass", "size_bytes": size}

    q8, q4 = target("q8_0", 9), target("q4_0", 5)
    size_only = {"targets": [q8, q4], "gate_rule": {"min_retention": {}, "max_size_mb": 100.0}}
    raise_on_failed_gates(size_only)  # every gate set passed
    with pytest.raises(GateFailed, match=r"no gate checked what gguf/q8_0, gguf/q4_0 answer.*min_retention"):
        pick(size_only)
    only_q8 = {"targets": [q8, q4], "gate_rule": {"min_retention": {"Q8_0": 0.98}}}
    assert pick(only_q8) is q8  # q4_0 is smaller, but nothing checked its answers
    every = {"targets": [q8, q4], "gate_rule": {"min_retention": {"*": 0.9}}}
    assert pick(every) is q4
    by_kl = {"targets": [q8, q4], "gate_rule": {"min_retention": {}, "max_kl": 0.1}}
    assert pick(by_kl) is q4
    # the gated files failed, an ungated one passed: said so, not "no gate checked" (set one)
    failed = {**q8, "device": "cpu", "gate": "fail", "gate_failures": ["retention 80.0% < 98%"]}
    fp32 = {**target("fp32", 20), "name": "onnx/fp32", "format": "onnx"}
    with pytest.raises(GateFailed, match=r"checked failed it: gguf/q8_0 \(cpu\): retention 80.0% < 98%$"):
        pick({"targets": [failed, fp32], "gate_rule": {"min_retention": {"q8_0": 0.98}}})


def test_gating_under_no_gates_passes_and_says_it_checked_nothing():
    from dataclasses import asdict

    from rich.console import Console

    from edgetune.bench.gates import raise_on_failed_gates
    from edgetune.bench.settings import GatesConfig

    q8 = {"name": "gguf/q8_0", "format": "gguf", "quant": "q8_0", "gate": "pass", "size_bytes": 9}
    for rule, warned in ((asdict(GatesConfig()), True), (asdict(GatesConfig(max_size_mb=10.0)), False)):
        console = Console(record=True, width=200)
        raise_on_failed_gates({"targets": [q8], "gate_rule": rule}, console)
        assert ("sets no bench.gates: the gates checked nothing" in console.export_text()) == warned


def test_bench_refuses_what_the_run_already_shows_before_measuring(benched, tmp_path, monkeypatch):
    """--pick under gates that check no file's answers, a truncated GGUF and a corrupt manifest:
    known before the first measurement, refused then, and no report written."""
    import shutil

    run, _ = benched
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "bench")
    opened = []
    monkeypatch.setattr("edgetune.bench.run.open_runner", lambda target, *a, **k: opened.append(target))
    recipe = yaml.safe_load((copy / "recipe.yaml").read_text())
    recipe["bench"]["gates"] = {"max_size_mb": 1000}
    (copy / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    picked = CliRunner().invoke(main, ["bench", str(copy), "--pick"])
    assert picked.exit_code == 3 and "gates check no file's answers" in picked.output
    gguf = copy / "export" / "gguf" / "model-q8_0.gguf"
    gguf.write_bytes(gguf.read_bytes()[:-1000])
    truncated = CliRunner().invoke(main, ["bench", str(copy)])
    assert truncated.exit_code == 2 and "model-q8_0.gguf: tensor" in truncated.output, truncated.output
    shutil.copy(run / "export" / "gguf" / "model-q8_0.gguf", gguf)
    (copy / "export" / "onnx" / "int8" / "config.json").unlink()  # found only once it was opened, late
    no_config = CliRunner().invoke(main, ["bench", str(copy)])
    assert no_config.exit_code == 2 and "int8/config.json: cannot read it" in no_config.output, (
        no_config.output
    )
    (copy / "manifest.json").write_text("{")
    corrupt = CliRunner().invoke(main, ["bench", str(copy)])
    assert corrupt.exit_code == 2 and "manifest.json: corrupt manifest" in corrupt.output
    said = picked.output + truncated.output + no_config.output + corrupt.output
    assert not (copy / "bench").exists() and "accuracy" not in said and not opened


def test_what_a_killed_export_left_is_no_export_and_the_next_export_removes_it(benched, tmp_path):
    """A kill -9 while tracing left export/onnx/.onnx-trace.*.tmp/model.onnx: it was checked,
    benched and fingerprinted as a variant, and kept the export `running` after a clean re-export."""
    import shutil

    from edgetune.bench.targets import discover_targets
    from edgetune.config import load_recipe
    from edgetune.fingerprints import export_files

    run, _ = benched
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    trace = copy / "export" / "onnx" / ".onnx-trace.x1y2.tmp"
    shutil.copytree(copy / "export" / "onnx" / "fp32", trace)
    partial = copy / "export" / "gguf" / ".model-q8_0.gguf.4242.tmp"
    partial.write_bytes(b"GGUF")
    replaced = shutil.copytree(copy / "export" / "onnx" / "int8", copy / "export" / "onnx" / ".int8.old-4242")
    (copy / "export" / ".notes.tmp").write_text("not ours to remove")  # above gguf/ and onnx/: untouched
    recipe = load_recipe(str(copy / "recipe.yaml"))
    names = [t.name for t in discover_targets(copy, ["cpu"], recipe) if t.format != "torch"]
    assert names == ["onnx/fp32", "onnx/int8", "gguf/q8_0"]
    assert not [p for p in export_files(copy) if ".tmp" in str(p)]
    checked = CliRunner().invoke(main, ["export", str(copy), "--check", "--to", "onnx"])
    assert checked.exit_code == 0 and "tmp" not in checked.output, checked.output
    again = CliRunner().invoke(main, ["export", str(copy), "--to", "onnx", "--quant", "fp32"])
    assert again.exit_code == 0, again.output
    assert not trace.exists() and not partial.exists() and not replaced.exists()
    assert (copy / "export" / ".notes.tmp").exists()
    assert json.loads((copy / "manifest.json").read_text())["stages"]["export"]["status"] == "done"


def test_a_file_changed_since_its_parity_check_is_not_vouched_for(benched, tmp_path):
    """The record was keyed by type: a GGUF rewritten by hand kept its pass, and bench's gates (and
    --pick) counted it as checked."""
    import shutil

    from edgetune.bench.regate import regate_run
    from edgetune.export.parity_record import run_export_problems

    run = shutil.copytree(benched[0], tmp_path / "run")
    assert run_export_problems(run) == []
    gguf = run / "export" / "gguf" / "model-q8_0.gguf"
    with gguf.open("r+b") as f:
        f.seek(gguf.stat().st_size - 8)
        f.write(b"\x00" * 8)
    assert run_export_problems(run) == [
        "gguf/q8_0: the file changed since its export parity check (run `edgetune export --check`)"
    ]
    report, _ = regate_run(run)
    q8 = next(t for t in report["targets"] if t["name"] == "gguf/q8_0")
    assert q8["gate"] == "fail" and "changed since its export parity check" in q8["export_parity_problem"]
    # an ONNX variant (its rows are named onnx/<variant>; its graph and external data are hashed)
    graph = run / "export" / "onnx" / "int8" / "model.onnx"
    original = graph.read_bytes()
    graph.write_bytes(original + b"\x00")
    assert "onnx/int8: the file changed since its export parity check" in " ".join(run_export_problems(run))
    graph.write_bytes(original)
    # checked again, and a second file of one type beside it: each row vouches for its own file
    shutil.copy(gguf, gguf.with_name("mine-q8_0.gguf"))
    checked = CliRunner().invoke(main, ["export", str(run), "--check"])
    assert checked.exit_code == 0, checked.output
    assert run_export_problems(run) == []


def test_an_onnx_folder_whose_side_files_changed_since_its_parity_check_is_not_vouched_for(benched, tmp_path):
    """The parity digest of an ONNX folder covered model.onnx* only: its generation_config.json,
    config.json or tokenizer edited after the check still passed bench's gates, unsaid. Rows an
    earlier edgetune recorded (without the side files' digests) still vouch for their folder."""
    import shutil

    from edgetune.bench.regate import regate_run
    from edgetune.export.parity_record import PARITY_FILE, run_export_problems

    run = shutil.copytree(benched[0], tmp_path / "run")
    settings = run / "export" / "onnx" / "fp32" / "generation_config.json"
    original = settings.read_text()
    settings.write_text(json.dumps(json.loads(original)))  # other bytes, the same settings
    assert run_export_problems(run) == [
        "onnx/fp32: generation_config.json changed since its export parity check (run `edgetune export --check`)"
    ]
    report, _ = regate_run(run)
    fp32 = next(t for t in report["targets"] if t["name"] == "onnx/fp32")
    assert fp32["gate"] == "fail" and "generation_config.json changed since" in fp32["export_parity_problem"]
    checked = CliRunner().invoke(main, ["export", str(run), "--check", "--to", "onnx"])
    assert checked.exit_code == 0, checked.output
    said = " ".join(checked.output.split())
    assert "onnx/fp32: generation_config.json changed since its last parity check; checked again" in said
    assert run_export_problems(run) == []  # the new bytes are the checked ones

    # as an earlier edgetune recorded the check: no side digests, and a folder as it was still vouched for
    manifest = json.loads((run / "manifest.json").read_text())
    for row in manifest["stages"]["export"]["onnx_parity"]:
        row.pop("side_sha256")
    (run / "manifest.json").write_text(json.dumps(manifest))
    rows = json.loads((run / "export" / "onnx" / PARITY_FILE).read_text())
    (run / "export" / "onnx" / PARITY_FILE).write_text(json.dumps([{**r, "side_sha256": None} for r in rows]))
    assert run_export_problems(run) == []
    assert next(t for t in regate_run(run)[0]["targets"] if t["name"] == "onnx/fp32")["gate"] == "pass"


def test_a_merged_model_edited_since_merge_is_named_not_the_data(benched, tmp_path):
    """A chat_template.jinja edited in RUN/merged/ after the merge made export --check and bench
    blame data.jsonl:1 ("the chat template renders earlier turns differently"), and a merged
    generation_config.json whose eos_token_id became 0 went unsaid."""
    import shutil

    run = shutil.copytree(benched[0], tmp_path / "run")
    template = run / "merged" / "chat_template.jinja"
    original = template.read_text()
    template.write_text(original.replace("'<|im_start|>assistant\n'", "'<|im_start|>assistant\n\n'"))
    assert template.read_text() != original
    edited = (
        f"{run / 'merged' / 'chat_template.jinja'} changed since merge (edit it back, or run `edgetune merge`"
    )
    for command in (["export", str(run), "--check", "--to", "onnx"], ["bench", str(run)]):
        refused = CliRunner().invoke(main, command)
        said = " ".join(refused.output.split())
        assert refused.exit_code == 2 and edited in said, said
        assert "accuracy" not in said  # refused before measuring
    template.write_text(original)

    settings = run / "merged" / "generation_config.json"
    settings.write_text(json.dumps({**json.loads(settings.read_text()), "eos_token_id": 0}))
    checked = CliRunner().invoke(main, ["export", str(run), "--check", "--to", "onnx"])
    said = " ".join(checked.output.split())
    assert (
        f"warning: {settings} changed since merge: export and bench use the merged model as it is now" in said
    )
    assert (
        checked.exit_code == 3
        and "generation_config.json: eos_token_id 2 where the merged model's is 0" in said
    ), said
    # a run an earlier edgetune merged records no digests: nothing is said of its merged/
    manifest = json.loads((run / "manifest.json").read_text())
    del manifest["stages"]["merge"]["side_files"]
    (run / "manifest.json").write_text(json.dumps(manifest))
    unrecorded = CliRunner().invoke(main, ["export", str(run), "--check", "--to", "onnx"])
    assert unrecorded.exit_code == 3 and "changed since merge" not in unrecorded.output, unrecorded.output


def test_an_export_elsewhere_or_interrupted_is_not_recorded_as_the_runs_checked_files(
    benched, tmp_path, monkeypatch
):
    import shutil

    import edgetune.export.parity
    from edgetune.export.parity_record import unchecked_exports

    run, _ = benched
    copy = tmp_path / "run"
    shutil.copytree(run, copy)

    def record():
        return json.loads((copy / "manifest.json").read_text())["stages"]["export"]

    before = record()
    q8 = copy / "export" / "gguf" / "model-q8_0.gguf"
    assert before["status"] == "done" and not unchecked_exports(
        {"stages": {"export": before}}, [("gguf", "q8_0", q8)]
    )
    elsewhere = tmp_path / "elsewhere"
    args = [
        "export",
        str(copy),
        "--to",
        "gguf",
        "--quant",
        "f16",
        "--imatrix",
        "off",
        "--out",
        str(elsewhere),
    ]
    sent = CliRunner().invoke(main, args)
    assert sent.exit_code == 0, sent.output
    assert (elsewhere / "gguf" / "model-f16.gguf").is_file() and record() == before
    # one more type in a run: the q8_0 beside it keeps its entry (size, hash)
    other = shutil.copytree(run, tmp_path / "other")
    more = CliRunner().invoke(main, ["export", str(other), *args[2:-2]])
    assert more.exit_code == 0, more.output
    listed = json.loads((other / "manifest.json").read_text())["stages"]["export"]["gguf"]
    assert sorted(entry["quant"] for entry in listed) == ["f16", "q8_0"]
    assert [e for e in listed if e["quant"] == "q8_0"] == before["gguf"]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(edgetune.export.parity, "check_gguf", interrupted)
    cut = CliRunner().invoke(
        main, ["export", str(copy), "--to", "gguf", "--quant", "q8_0", "--imatrix", "off"]
    )
    assert cut.exit_code == 130 and "not all were checked: run the same export again" in cut.output, (
        cut.output
    )
    after = record()
    assert after["status"] == "running" and after["gguf_parity"] == [] and after["onnx_parity"]
    assert json.loads((copy / "export" / "gguf" / "parity.json").read_text()) == []
    int8 = copy / "export" / "onnx" / "int8"
    problems = unchecked_exports(
        {"stages": {"export": after}}, [("gguf", "q8_0", q8), ("onnx", "int8", int8)]
    )
    assert problems == ["gguf/q8_0: its export parity was never checked (run `edgetune export --check`)"]
    monkeypatch.undo()

    def quants(fmt):
        return sorted(r["quant"] for r in record()[f"{fmt}_parity"])

    onnx_only = CliRunner().invoke(main, ["export", str(copy), "--check", "--to", "onnx"])
    assert onnx_only.exit_code == 0, onnx_only.output
    assert record()["status"] == "running"  # the GGUF is still unchecked
    checked = CliRunner().invoke(main, ["export", str(copy), "--check", "--to", "gguf"])
    assert checked.exit_code == 0, checked.output
    assert (
        record()["status"] == "done" and record()["gguf_parity_passed"] and quants("onnx") == ["fp32", "int8"]
    )
    # a file replaced loses its row before it is rewritten: a write cut short leaves no stale pass
    import edgetune.export.run

    monkeypatch.setattr(edgetune.export.run, "_export_gguf", interrupted)
    cut = CliRunner().invoke(
        main, ["export", str(copy), "--to", "gguf", "--quant", "q8_0", "--imatrix", "off"]
    )
    assert cut.exit_code == 130 and record()["status"] == "running" and quants("gguf") == []
    monkeypatch.undo()
    # exporting one more type keeps the rows of the files it leaves alone
    assert CliRunner().invoke(main, ["export", str(copy), "--check", "--to", "gguf"]).exit_code == 0
    more = CliRunner().invoke(
        main, ["export", str(copy), "--to", "gguf", "--quant", "f16", "--imatrix", "off"]
    )
    assert more.exit_code == 0, more.output
    assert quants("gguf") == ["f16", "q8_0"] and record()["status"] == "done"


def test_a_target_whose_latency_was_not_measured_still_has_every_contract_field():
    """report.json's contract names the latency fields for every target: with `bench.latency: false`
    or a failed timing process they are null, not missing."""
    from pathlib import Path

    from edgetune.bench.accuracy import Accuracy
    from edgetune.bench.run import _target_entry
    from edgetune.bench.runners import Target

    target = Target("gguf/q8_0", "gguf", "q8_0", "llama.cpp", "cpu", Path("model-q8_0.gguf"))
    entry = _target_entry(target, Accuracy("exact", 0.5, 2.0, 0.01, 0.9, 1.0, 3.0, 4), 0.5)
    for key in ("load_s", "ttft_ms", "prefill_tok_s", "decode_tok_s", "peak_rss_mb"):
        assert key in entry and entry[key] is None
    assert entry["retention"] == 1.0


def test_reference_distributions_past_the_memory_budget_go_to_disk_and_give_the_same_kl(benched, monkeypatch):
    import errno

    import numpy as np

    from edgetune.bench import reference as reference_module
    from edgetune.bench.accuracy import Case, evaluate
    from edgetune.bench.reference import SPILL_PREFIX, ReferenceLogprobs, remove_stale_spills
    from edgetune.bench.runners import LlamaRunner, Target, TorchRunner
    from edgetune.errors import DiskFull

    run, _ = benched
    assert not list(run.glob(f"{SPILL_PREFIX}*"))  # bench removed its own
    merged = TorchRunner(Target("torch/merged", "torch", "fp32", "torch", "cpu", run / "merged"))
    gguf = LlamaRunner(
        Target("gguf/q8_0", "gguf", "q8_0", "llama.cpp", "cpu", run / "export" / "gguf" / "model-q8_0.gguf"),
        logits_all=True,
    )
    cases = [Case([], ids, ids, None) for ids in ([5, 17, 33, 80, 12, 9], [7, 3, 44, 2], [90, 1, 8, 8, 30])]
    stale = run / f"{SPILL_PREFIX}killed"
    stale.mkdir()

    def kl_of(reference):
        return evaluate(gguf, cases, "json_fields", str, [], 4, reference).kl_scores

    def reference_logprobs(memory_bytes=reference_module.MEMORY_BYTES):
        """What bench keeps: the reference's own evaluation hands each case's log-probabilities on."""
        kept = ReferenceLogprobs(run, memory_bytes)
        try:
            evaluate(merged, cases, "json_fields", str, [], 4, keep=lambda i, logprobs: kept.append(logprobs))
        except BaseException:
            kept.close()
            raise
        return kept

    remove_stale_spills(run)  # what bench does once it holds the run's lock
    assert not stale.exists()  # a killed bench's files are removed
    with reference_logprobs() as in_memory:
        assert in_memory.spilled == 0
        expected, arrays = kl_of(in_memory), [np.array(a) for a in in_memory]
    one_row = merged.logits(cases[0].full_ids)[:1].astype(np.float32).nbytes
    with reference_logprobs(memory_bytes=one_row * 6) as spilled:
        assert spilled.spilled == 2 and len(spilled) == 3  # the first fits, the other two do not
        assert len(list(run.glob(f"{SPILL_PREFIX}*/*.npy"))) == 2
        for i in range(3):
            assert spilled[i].dtype == np.float32
            np.testing.assert_array_equal(spilled[i], arrays[i])
        np.testing.assert_allclose(kl_of(spilled), expected, rtol=1e-6)
    assert not list(run.glob(f"{SPILL_PREFIX}*"))  # removed on exit

    def full_disk(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(reference_module.np, "save", full_disk)
    with pytest.raises(DiskFull, match="disk full.*bench.kl_examples"):
        reference_logprobs(memory_bytes=0)
    assert not list(run.glob(f"{SPILL_PREFIX}*"))


def test_bench_on_a_run_whose_tune_never_finished_says_to_resume_it(benched, tmp_path):
    """It said to run export or merge, which need the adapter the run does not have yet."""
    import shutil

    run, _ = benched
    copy = shutil.copytree(
        run, tmp_path / "run", ignore=shutil.ignore_patterns("merged", "adapter", "export")
    )
    result = CliRunner().invoke(main, ["bench", str(copy)])
    assert result.exit_code == 2 and "no adapter yet (its tune did not finish)" in result.output, (
        result.output
    )
    assert "edgetune tune --resume" in result.output
    shutil.rmtree(copy / "checkpoints")  # stopped before its first checkpoint: nothing to resume
    result = CliRunner().invoke(main, ["bench", str(copy)])
    assert result.exit_code == 2 and "stopped before its first checkpoint" in result.output, result.output
    assert "--resume" not in result.output


def test_a_gguf_target_gets_the_context_its_longest_case_needs(tmp_path, tiny_tokenizer):
    """llama.cpp fails past n_ctx (2048 by default) where torch scores on: a held-out example of
    2100 tokens, within a 4096-position model's data.max_seq_len, is scored by the GGUF too."""
    from conftest import build_tiny_model

    from edgetune.bench.accuracy import Case, context_for
    from edgetune.bench.runners import Target, open_runner
    from edgetune.export.gguf_convert import convert

    model = build_tiny_model(tmp_path, tiny_tokenizer, "LlamaForCausalLM", max_position_embeddings=4096)
    path = convert(model, tmp_path / "model-f32.gguf", "f32")
    ids = [5, 17, 33, 80, 12, 9] * 350
    long = Case(prompt_ids=ids[:2000], full_ids=ids, labels=ids, reference="x")
    assert context_for([long], 128) == 2144 and context_for([], 128) == 2048
    target = Target("gguf/f32", "gguf", "f32", "llama.cpp", "cpu", path)
    torch_logits = open_runner(Target("torch/merged", "torch", "fp32", "torch", "cpu", model), 1).logits(ids)
    gguf_logits = open_runner(target, 1, n_ctx=context_for([long], 128)).logits(ids)
    assert gguf_logits.shape == torch_logits.shape
    assert np.abs(gguf_logits[-1] - torch_logits[-1]).max() < 1e-2


def test_pick_and_regate_answer_for_the_files_in_the_run_as_they_are_now(benched, tmp_path):
    """--pick printed the path written at bench time (a run set aside to .previous, or a project
    moved, printed another run's file), and --regate passed a file deleted or exported again since
    bench measured it."""
    import shutil

    run, _ = benched
    copy = tmp_path / "moved" / "run"
    shutil.copytree(run, copy)
    recipe = yaml.safe_load((copy / "recipe.yaml").read_text())
    recipe["bench"]["gates"] = {"max_kl": 5.0}
    (copy / "recipe.yaml").write_text(yaml.safe_dump(recipe))

    def regate(*flags):
        return CliRunner().invoke(main, ["bench", str(copy), "--regate", *flags])

    picked = regate("--pick")
    assert picked.exit_code == 0, picked.output
    chosen = Path(picked.stdout.strip())
    assert chosen.is_relative_to(copy) and chosen.exists(), chosen
    # a folder that lost its tokenizer fails, said as that
    (copy / "export" / "onnx" / "fp32" / "tokenizer.json").unlink()
    failed = regate("--gate")
    assert "onnx/fp32 (cpu): export parity: the folder has lost its tokenizer files" in failed.output
    gone = copy / "export" / "onnx" / "int8"
    shutil.rmtree(gone)
    failed = regate("--gate")
    assert failed.exit_code == 3 and "the file is no longer in the run" in failed.output, failed.output
    assert Path(regate("--pick").stdout.strip()) != gone
    again = CliRunner().invoke(
        main, ["export", str(copy), "--to", "gguf", "--quant", "q8_0", "--imatrix", "off"]
    )
    assert again.exit_code == 0, again.output  # other bytes, which pass their own parity check
    failed = regate("--gate")
    assert "gguf/q8_0 (cpu): export parity: the file changed since bench measured it" in failed.output


def test_a_bench_says_which_of_the_recipes_exports_the_run_lacks(benched, tmp_path):
    """An export killed after its GGUFs (the ONNX never written) benched the GGUFs without a word,
    and a gate on them alone passed."""
    import shutil

    run = shutil.copytree(benched[0], tmp_path / "run")
    shutil.rmtree(run / "export" / "onnx" / "int8")
    result = CliRunner().invoke(main, ["bench", str(run), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    said = next(line for line in result.output.splitlines() if line.startswith("warning: the recipe exports"))
    # (the fixture exported some of the recipe's types by hand; the others are named too)
    assert "onnx/int8" in said and "onnx/fp32" not in said and "gguf/q8_0" not in said, said
    assert said.endswith(", which this run does not have (an export interrupted, or none since the recipe changed): "
                         f"`edgetune export {run}` first, or they go unmeasured")  # fmt: skip
    checked = CliRunner().invoke(main, ["export", str(run), "--check"])
    assert checked.exit_code == 0, checked.output  # what is there passes; what is not is said
    assert "warning: the recipe exports gguf/q4_k_m, onnx/int4, onnx/int8: not in the run, unchecked" in (
        checked.output
    )


def test_a_missing_type_whose_file_name_holds_another_type_is_said_to(benched, tmp_path):
    """A q8_0 file copied over model-q4_k_m.gguf: export --check and bench said the recipe's
    gguf/q4_k_m was "not in the run", with the file of that name right there."""
    import shutil

    from edgetune.export.layout import missing_exports
    from edgetune.run_recipe import load_run_recipe

    run = shutil.copytree(benched[0], tmp_path / "run")
    gguf_dir = run / "export" / "gguf"
    (q8,) = [p for p in gguf_dir.glob("*.gguf") if p.stem.endswith("q8_0")]
    shutil.copy(q8, gguf_dir / q8.name.replace("q8_0", "q4_k_m"))
    said = missing_exports(run, load_run_recipe(run))
    assert (
        f"gguf/q4_k_m ({q8.name.replace('q8_0', 'q4_k_m')} holds q8_0, by its general.file_type)" in said
    ), said
    assert "onnx/int4" in said, said  # the others as before


def test_a_device_named_twice_is_measured_once(benched, tmp_path):
    import shutil

    run = shutil.copytree(benched[0], tmp_path / "run")
    twice = CliRunner().invoke(main, ["bench", str(run), "--device", "cpu,cpu"])
    assert twice.exit_code == 0, twice.output
    names = [t["name"] for t in json.loads((run / "bench" / "report.json").read_text())["targets"]]
    assert len(names) == len(set(names)), names


def test_a_bench_called_from_python_leaves_the_callers_process_as_it_was(benched, tmp_path, callers_settings):
    """bench's torch targets set torch's thread count to bench.threads and left it (a service that
    had pinned its own count ran on bench's from then on), and loading them drew from its torch RNG."""
    import shutil

    from conftest import caller_state

    from edgetune.bench.run import bench

    run = shutil.copytree(benched[0], tmp_path / "run")
    shutil.rmtree(run / "export")  # the torch targets alone: those set the threads
    before = caller_state()
    assert before["torch_threads"] != yaml.safe_load((run / "recipe.yaml").read_text())["bench"]["threads"]
    report = bench(run, ["cpu"])
    after = caller_state()
    assert {t["name"].split("/")[0] for t in report["targets"]} == {"torch"}
    assert [name for name in before if after[name] != before[name]] == []


def test_more_bench_threads_than_cores_is_warned_about(benched, tmp_path, monkeypatch):
    """bench.threads past the cores made every latency row measure threads contending, unsaid;
    an OMP_NUM_THREADS past them is named as that, not as a bench.threads the user never set."""
    import shutil

    from edgetune.cores import usable_cores

    run = shutil.copytree(benched[0], tmp_path / "run")
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["bench"]["threads"] = usable_cores() + 1
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(main, ["bench", str(run), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (
        f"warning: bench.threads {usable_cores() + 1} is more than the {usable_cores()} cores this "
        "process may use" in " ".join(result.output.split())
    ), result.output
    del recipe["bench"]["threads"]
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    monkeypatch.setenv("OMP_NUM_THREADS", str(usable_cores() + 1))
    result = CliRunner().invoke(main, ["bench", str(run), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert f"warning: OMP_NUM_THREADS {usable_cores() + 1} is more than" in result.output, result.output


def test_a_latency_child_ends_with_the_bench_that_started_it():
    """kill -9 of `edgetune bench` left its latency subprocess measuring on, beside the next bench."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    child = (
        "import os, time; from edgetune.child_process import die_with_parent; "
        "die_with_parent(os.getppid()); print(os.getpid(), flush=True); time.sleep(120)"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}])"],
        stdout=subprocess.PIPE,
        text=True,
    )
    pid = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    parent.stdout.close()

    def alive() -> bool:
        try:
            return " Z " not in Path(f"/proc/{pid}/stat").read_text().replace("(", " ").replace(")", " ")
        except FileNotFoundError:
            return False

    deadline = time.time() + 30
    while alive() and time.time() < deadline:
        time.sleep(0.1)
    assert not alive()


def test_report_md_says_what_was_not_measured(benched):
    """With bench.latency: false report.md described a latency run and an empty bandwidth table;
    on text rows it named a task metric on N examples while every metric cell was '-'."""
    from edgetune.bench.report import markdown

    report = json.loads((benched[0] / "bench" / "report.json").read_text())
    report["settings"]["latency"] = False
    report["machine"]["bandwidth_gb_s"] = None
    for t in report["targets"]:
        t.update(decode_tok_s=None, ttft_ms=None, task_metric={**t["task_metric"], "value": None})
    text = markdown(report)
    assert "Latency: not measured (bench.latency: false)." in text and "median of" not in text
    assert "memory bandwidth" not in text
    assert text.startswith(f"# edgetune bench: {report['run']}\n\nNo task metric: the ")


def test_bench_says_which_held_out_examples_its_score_leaves_out(tmp_path, tiny_tokenizer, benched):
    """Held-out rows past data.max_seq_len were left out of the score without a word, and reference
    answers longer than bench.max_new_tokens were cut for every target (exact 0.5 at 16 tokens,
    1.0 at 64 on the same model): the only trace was an EOS rate."""
    from conftest import chat_row, write_jsonl

    from edgetune.bench.accuracy import build_cases, coverage_warnings
    from edgetune.bench.report import markdown
    from edgetune.data.render import Renderer
    from edgetune.data.rows import load_examples

    rows = [chat_row(f"log {i}", "port up") for i in range(4)]
    rows += [chat_row("router battery " * 60, "port up"), chat_row("log 9", "router battery " * 12)]
    held = write_jsonl(tmp_path / "test.jsonl", rows)
    examples = load_examples(held).examples
    renderer = Renderer(tiny_tokenizer, max_seq_len=96)
    cases = build_cases(renderer, examples)
    assert len(cases) == 5
    too_long, cut = coverage_warnings(renderer, examples, cases, max_new_tokens=16)
    assert too_long.startswith("1 of 6 held-out examples are longer than data.max_seq_len (96 tokens)")
    assert f"(e.g. {held}:5)" in too_long
    assert cut.startswith("1 of 5 reference answers are longer than bench.max_new_tokens (16; the longest")
    assert f"{held}:6)" in cut
    assert coverage_warnings(renderer, examples[:4], cases[:4], max_new_tokens=16) == []
    assert coverage_warnings(renderer, examples, cases, max_new_tokens=64) == [too_long]
    report = json.loads((benched[0] / "bench" / "report.json").read_text())
    # the fixture's bench generates 6 tokens, for speed: said in the report and on the terminal
    assert [w.split(" (")[0] for w in report["warnings"]] == [
        "4 of 4 reference answers are longer than bench.max_new_tokens"
    ]
    assert "warning: 4 of 4 reference answers are longer" in benched[1].output
    assert f"- **warning**: {cut}" in markdown({**report, "warnings": [cut]})


def test_a_disk_that_fills_while_the_report_is_written_leaves_the_old_report_whole(benched, monkeypatch):
    """report.md was replaced, then the PNG's write failed: json and png were the old run's, md the
    new one's, and neither --regate nor `edgetune run` rewrote them."""
    import errno
    import os

    from edgetune.bench.report import write_report
    from edgetune.errors import DiskFull

    out = benched[0] / "bench"
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name.startswith("report.")}
    report = json.loads((out / "report.json").read_text())
    report["run"] = "another"
    calls = []
    real_fsync = os.fsync

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 2:  # the second file
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr("edgetune.rundir.os.fsync", fsync)
    with pytest.raises(DiskFull, match=r"report.png: disk full"):
        write_report(report, out)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name.startswith("report.")} == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr("edgetune.rundir.os.fsync", real_fsync)
    write_report(report, out)
    assert "# edgetune bench: another" in (out / "report.md").read_text()
    assert json.loads((out / "report.json").read_text())["run"] == "another"
    write_report(json.loads(before["report.json"]), out)  # the module's other tests read the original


def test_a_runtime_the_install_lacks_is_named_before_anything_is_measured(benched, monkeypatch):
    """Without llama-cpp-python, bench measured the torch and ONNX targets for minutes, then ended
    in "internal error: ModuleNotFoundError"; export wrote the f32 file and importance matrix first."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a)
    )
    run = benched[0]
    before = (run / "bench" / "report.json").read_bytes()
    result = CliRunner().invoke(main, ["bench", str(run)])
    assert result.exit_code == 2, result.output
    assert "the Python package llama-cpp-python is not installed here (bench's GGUF targets)" in result.output
    assert "make install" in result.output and "accuracy" not in result.output
    assert (run / "bench" / "report.json").read_bytes() == before
    exported = CliRunner().invoke(main, ["export", str(run), "--to", "gguf", "--quant", "q8_0"])
    assert exported.exit_code == 2 and "llama-cpp-python is not installed here" in exported.output


def test_any_dependency_the_install_lacks_is_one_line_with_the_fix(monkeypatch):
    import yaml

    def broken(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")

    monkeypatch.setattr(yaml, "safe_load", broken)
    result = CliRunner().invoke(main, ["recipes"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        "edgetune: error: the Python package matplotlib is not installed here: `pip install 'matplotlib'`, "
        "or `make install` in edgetune's checkout for every dependency"
    )


def test_a_bench_folder_it_cannot_write_is_refused_before_measuring(benched, tmp_path):
    """An unwritable run measured for minutes (the demo: 18 to 48), then failed to save its report."""
    import shutil

    run = tmp_path / benched[0].name
    shutil.copytree(benched[0], run, ignore=shutil.ignore_patterns("bench"))
    (run / "bench").write_text("a file where the report folder goes")
    result = CliRunner().invoke(main, ["bench", str(run)])
    assert result.exit_code == 2, result.output
    assert f"{run / 'bench'}: cannot write there" in " ".join(result.output.split())
    assert "fail to save its report" in result.output and "accuracy" not in result.output


def test_an_exported_file_of_another_vocabulary_is_named_before_anything_is_measured(benched, tmp_path):
    """Another model's GGUF or ONNX folder in the run's export folder (copied in by mistake, or
    from before a retrain with added tokens) ended bench, after its torch targets were measured, and
    `export --check`, in "internal error: ValueError: operands could not be broadcast together"."""
    import shutil

    from transformers import AutoModelForCausalLM

    from edgetune.export.run import export

    wider = tmp_path / "wider"
    shutil.copytree(benched[0] / "merged", wider)
    model = AutoModelForCausalLM.from_pretrained(wider)
    model.resize_token_embeddings(model.config.vocab_size + 64)
    model.save_pretrained(wider)
    rows = model.config.vocab_size
    export(wider, ["gguf", "onnx"], ["f32", "fp32"], out=tmp_path / "other")
    for fmt, exported, inside in (
        ("gguf", tmp_path / "other" / "gguf" / "model-f32.gguf", "export/gguf/model-q8_0.gguf"),
        ("onnx", tmp_path / "other" / "onnx" / "fp32", "export/onnx/fp32"),
    ):
        run = tmp_path / f"run-{fmt}"
        shutil.copytree(benched[0], run, ignore=shutil.ignore_patterns("bench"))
        shutil.rmtree(run / inside) if (run / inside).is_dir() else (run / inside).unlink()
        (shutil.copytree if exported.is_dir() else shutil.copy)(exported, run / inside)
        result = CliRunner().invoke(main, ["bench", str(run)])
        assert result.exit_code == 2, result.output
        said = " ".join(result.output.split())
        assert (
            f"{run / inside}: computes logits over {rows} tokens, the merged model over {rows - 64}" in said
        )
        assert "accuracy" not in result.output  # said before any measuring
        checked = CliRunner().invoke(main, ["export", str(run), "--check", "--to", fmt])
        assert checked.exit_code == 2, checked.output
        assert f"computes logits over {rows} tokens, the merged model over {rows - 64}" in checked.output


def test_onnx_folders_are_timed_in_onnxruntime_genai_where_it_can_run_them(tmp_path, benched):
    """Only a CPU ONNX folder with its genai_config.json; a failure there is said in the report, and
    the folder's own onnxruntime row stands."""
    from edgetune.bench.report import markdown
    from edgetune.bench.run import _genai_latency
    from edgetune.bench.runners import Target
    from edgetune.errors import ModelError

    folder = tmp_path / "int4"
    folder.mkdir()
    target = Target("onnx/int4", "onnx", "int4", "onnxruntime", "cpu", folder)
    timed = []

    def measure(t):
        timed.append(t.runtime)
        raise ModelError("latency of onnx/int4 failed in its subprocess: RuntimeError: no session")

    assert _genai_latency(target, measure) == {} and timed == []  # exported before: no genai_config.json
    (folder / "genai_config.json").write_text("{}")
    for other in (
        Target("gguf/q8_0", "gguf", "q8_0", "llama.cpp", "cpu", folder),
        Target(**{**vars(target), "device": "cuda"}),
    ):
        assert _genai_latency(other, measure) == {} and timed == []
    said = _genai_latency(target, measure)
    assert timed == ["onnxruntime-genai"]
    assert said == {"genai_error": "latency of onnx/int4 failed in its subprocess: RuntimeError: no session"}
    report = json.loads((benched[0] / "bench" / "report.json").read_text())
    for t in report["targets"]:
        t.pop("genai", None)
    report["targets"][2].update(said)
    md = markdown(report)
    assert (
        f"- onnxruntime-genai could not time {report['targets'][2]['name']}: latency of onnx/int4 failed"
        in md
    )
    assert "genai decode" not in md  # no column where nothing was timed in it
    from rich.console import Console

    from edgetune.bench.report import print_table

    console = Console(record=True, width=300)
    print_table(report, console)  # and on the terminal, where the column went without a word
    assert "warning: onnxruntime-genai could not time" in console.export_text()
