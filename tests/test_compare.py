"""`edgetune bench --compare`: two runs' reports paired on the held-out examples they share."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgetune.bench.compare import BETTER, NOISE, WORSE, compare_reports
from edgetune.bench.confidence import difference_interval
from edgetune.cli import main
from edgetune.errors import InputError


def report(run, ids, scores, metric="json_fields", **more_targets):
    targets = [{"name": "torch/merged", "device": "cpu", "scores": scores}]
    targets += [{"name": name, "device": "cpu", "scores": s} for name, s in more_targets.items()]
    return {
        "run": run,
        "reference": {"name": "torch/merged", "metric": metric, "examples": len(ids), "example_ids": ids},
        "targets": targets,
    }


IDS = [f"e{i}" for i in range(40)]
BASE = [0.5 + 0.1 * (i % 5) for i in range(40)]


def test_a_gain_on_every_example_is_better_a_loss_worse_and_a_mix_within_noise():
    gained = [s + 0.1 for s in BASE]
    mixed = [s + (0.1 if i % 2 else -0.1) for i, s in enumerate(BASE)]
    before = report("v1", IDS, BASE, **{"gguf/q8_0": BASE})
    after = report("v2", IDS, gained, **{"gguf/q8_0": mixed})
    merged, q8 = compare_reports(before, after)
    assert merged.verdict == BETTER and merged.difference == pytest.approx(0.1) and merged.examples == 40
    assert q8.verdict == NOISE and q8.interval[0] < 0 < q8.interval[1]
    (back,) = compare_reports(report("v2", IDS, gained), report("v3", IDS, BASE))
    assert back.verdict == WORSE and back.interval[1] < 0


def test_scores_are_paired_by_example_id_not_by_position():
    after_ids = list(reversed(IDS[10:])) + ["new1", "new2"]  # a changed split: 30 shared, in another order
    after_scores = [BASE[int(e[1:])] + 0.05 for e in after_ids[:30]] + [0.0, 0.0]
    (change,) = compare_reports(report("v1", IDS, BASE), report("v2", after_ids, after_scores))
    assert change.examples == 30
    shared = [int(e[1:]) for e in after_ids[:30]]
    assert change.before == pytest.approx(sum(BASE[i] for i in shared) / 30)
    assert change.difference == pytest.approx(0.05)
    expected = difference_interval(after_scores[:30], [BASE[i] for i in shared])
    assert change.interval == pytest.approx(expected)


def test_targets_in_one_report_only_are_left_out():
    changes = compare_reports(
        report("v1", IDS, BASE, **{"onnx/int8": BASE}), report("v2", IDS, BASE, **{"gguf/q8_0": BASE})
    )
    assert [c.target for c in changes] == ["torch/merged"]


@pytest.mark.parametrize(
    "before, after, message",
    [
        (
            report("v1", IDS, BASE, metric="exact"),
            report("v2", IDS, BASE),
            "compare runs benched with one bench.metric",
        ),
        (
            report("v1", [f"x{i}" for i in range(40)], BASE),
            report("v2", IDS, BASE),
            "share no held-out example",
        ),
        (
            {**report("v1", IDS, BASE), "reference": {"metric": "json_fields"}},
            report("v2", IDS, BASE),
            "no example ids",
        ),
    ],
)
def test_reports_that_cannot_be_paired_say_why(before, after, message):
    with pytest.raises(InputError, match=message):
        compare_reports(before, after)


def _run(tmp_path, name, rep):
    (tmp_path / name / "bench").mkdir(parents=True)
    (tmp_path / name / "bench" / "report.json").write_text(json.dumps(rep))
    return tmp_path / name


def test_cli_prints_the_comparison_and_gate_exits_3_only_when_worse(tmp_path):
    v1 = _run(tmp_path, "v1", report("v1", IDS, BASE))
    v2 = _run(tmp_path, "v2", report("v2", IDS, [s - 0.1 for s in BASE]))
    result = CliRunner().invoke(main, ["bench", str(v2), "--compare", str(v1)])
    assert result.exit_code == 0, result.output
    assert (
        "json_fields: v2 against v1" in result.output
        and "worse" in result.output
        and "-0.100" in result.output
    )
    result = CliRunner().invoke(main, ["bench", str(v2), "--compare", str(v1), "--gate"])
    assert (
        result.exit_code == 3
        and "worse than the compared run beyond noise: torch/merged (cpu) -0.100" in result.output
    )
    assert CliRunner().invoke(main, ["bench", str(v1), "--compare", str(v2), "--gate"]).exit_code == 0
    result = CliRunner().invoke(main, ["bench", str(v2), "--compare", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "nope: run directory not found" in result.output
    (v1 / "bench" / "report.json").write_text("{")
    result = CliRunner().invoke(main, ["bench", str(v2), "--compare", str(v1)])
    assert result.exit_code == 2 and "report.json: line 1: not JSON" in result.output
    result = CliRunner().invoke(main, ["bench", str(v2), "--compare", str(v1), "--regate"])
    assert result.exit_code == 2 and "--compare measures nothing" in result.output
