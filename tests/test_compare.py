"""`edgetune bench --compare`: two runs' reports paired on the held-out examples they share."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgetune.bench.compare import BETTER, NOISE, WORSE, compare_kl, compare_reports
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
    (tmp_path / "notes").mkdir()
    result = CliRunner().invoke(main, ["bench", str(v2), "--compare", str(tmp_path / "notes")])
    assert result.exit_code == 2 and "notes: not a run directory (no recipe.yaml)" in result.output
    (v1 / "bench" / "report.json").write_text("{")
    result = CliRunner().invoke(main, ["bench", str(v2), "--compare", str(v1)])
    assert result.exit_code == 2 and "report.json: line 1: not JSON" in result.output
    result = CliRunner().invoke(main, ["bench", str(v2), "--compare", str(v1), "--regate"])
    assert result.exit_code == 2 and "--compare measures nothing" in result.output


def _broken(edit):
    rep = report("v1", list(IDS), list(BASE))  # copies: the edit must not reach the shared lists
    edit(rep)
    return rep


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda r: r["targets"][0]["scores"].__setitem__(3, float("nan")),
            "targets[0].scores is not a list of finite numbers (entry 3 is nan)",
        ),
        (
            lambda r: r["targets"][0].__setitem__("scores", "0.5"),
            "targets[0].scores is not a list of numbers",
        ),
        (lambda r: r.__setitem__("targets", {"a": 1}), "targets is missing or not a list"),
        (lambda r: r["targets"].append("gguf"), "targets[1] is not a mapping"),
        (lambda r: r["targets"][0].pop("device"), "targets[0].device is missing"),
        (lambda r: r.__setitem__("reference", []), "reference is not a mapping"),
        (
            lambda r: r["reference"].__setitem__("example_ids", [1, 2]),
            "reference.example_ids is not a list of strings",
        ),
        (lambda r: r["reference"].pop("metric"), "reference.metric is missing"),
    ],
)
def test_a_malformed_report_is_refused_naming_the_field(tmp_path, edit, message):
    """A hand-edited report: a NaN score would compare false with everything and read as a verdict."""
    v1 = _run(tmp_path, "v1", _broken(edit))
    v2 = _run(tmp_path, "v2", report("v2", IDS, BASE))
    for args in (["bench", str(v2), "--compare", str(v1)], ["bench", str(v1), "--compare", str(v2)]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        assert f"v1/bench/report.json: not an edgetune bench report ({message}" in result.output


def with_kl(rep, kl_ids, **kl_scores):
    """`rep` with kl_example_ids and each named target's per-example KL."""
    rep["reference"]["kl_example_ids"] = kl_ids
    for t in rep["targets"]:
        if t["name"] in kl_scores:
            t["kl_scores"] = kl_scores[t["name"]]
    return rep


KL = [0.01 + 0.001 * (i % 4) for i in range(16)]


def q4_run(run, kl):
    """A report of the merged model and a Q4_K_M with `kl` on the first 16 examples."""
    return with_kl(report(run, IDS, BASE, **{"gguf/q4_k_m": BASE}), IDS[:16], **{"gguf/q4_k_m": kl})


def test_kl_is_compared_per_exported_target_lower_being_better_and_paired_on_the_kl_examples():
    # the later run's KL examples are the earlier run's last 12 and 4 others, in another order
    later_ids = list(reversed(IDS[4:16])) + ["n1", "n2", "n3", "n4"]
    later_q4 = [KL[int(e[1:])] * 2 for e in later_ids[:12]] + [9.0] * 4  # the unshared ones do not count
    before = with_kl(
        report("v1", IDS, BASE, **{"gguf/q4_k_m": BASE, "gguf/q8_0": BASE}),
        IDS[:16],
        **{"torch/merged": [0.0] * 16, "gguf/q4_k_m": KL, "gguf/q8_0": KL},
    )
    after = with_kl(
        report("v2", IDS, BASE, **{"gguf/q4_k_m": BASE, "gguf/q8_0": BASE}),
        later_ids,
        **{"torch/merged": [0.0] * 16, "gguf/q4_k_m": later_q4, "gguf/q8_0": [k / 2 for k in later_q4]},
    )
    q4, q8 = compare_kl(before, after)
    assert [q4.target, q8.target] == ["gguf/q4_k_m", "gguf/q8_0"]  # the reference's KL is 0 by definition
    shared = [KL[int(e[1:])] for e in later_ids[:12]]
    assert q4.examples == 12 and q4.before == pytest.approx(sum(shared) / 12)
    assert q4.after == pytest.approx(2 * q4.before) and q4.verdict == WORSE and q4.interval[0] > 0
    assert q8.difference == pytest.approx(0) and q8.verdict == NOISE
    (back,) = compare_kl(after, q4_run("v3", KL))
    assert back.verdict == BETTER and back.interval[1] < 0
    # an fp32 export's KL is float rounding: a change in it is no verdict
    rounding = with_kl(report("v4", IDS, BASE, **{"onnx/fp32": BASE}), IDS[:16], **{"onnx/fp32": [3e-9] * 16})
    exact = with_kl(report("v5", IDS, BASE, **{"onnx/fp32": BASE}), IDS[:16], **{"onnx/fp32": [-4e-10] * 16})
    (fp32,) = compare_kl(rounding, exact)
    assert fp32.interval[1] < 0 and fp32.verdict == NOISE
    # a report from before kl_example_ids: its KL examples are its first example ids where every
    # case was answered (reference.examples counts the cases), and unknown otherwise
    del before["reference"]["kl_example_ids"]
    assert [c.examples for c in compare_kl(before, after)] == [12, 12]
    before["reference"]["examples"] = 41  # one case (a text row) was not answered: ids and cases differ
    assert compare_kl(before, after) == [] and len(compare_reports(before, after)) == 3


def test_cli_prints_the_kl_table_and_gate_reads_the_scores_only(tmp_path):
    v1 = _run(tmp_path, "v1", q4_run("v1", KL))
    v2 = _run(tmp_path, "v2", q4_run("v2", [k * 3 for k in KL]))
    result = CliRunner().invoke(main, ["bench", str(v2), "--compare", str(v1), "--gate"])
    assert result.exit_code == 0, result.output
    assert "KL to its run's merged model" in result.output and "worse" in result.output
    assert "0.0115" in result.output and "0.0345" in result.output  # the means, to 3 significant figures


def test_too_few_shared_examples_is_said_and_fails_the_gate():
    """9 of 9 examples lost had no interval, read as 'within noise': `--gate` passed a collapse."""
    from edgetune.bench.compare import TOO_FEW, raise_on_worse
    from edgetune.errors import GateFailed

    ids = IDS[:9]
    (change,) = compare_reports(report("v1", ids, [1.0] * 9), report("v2", ids, [0.0] * 9))
    assert change.verdict == TOO_FEW and change.interval is None
    with pytest.raises(GateFailed, match="share 9 scored examples, fewer than the 10"):
        raise_on_worse([change])


def test_a_few_examples_worse_and_none_better_is_noise_until_the_sign_test_agrees():
    """4 of 90 worse, none better: the bootstrap interval (-0.089, -0.011) left 0 out, but a sign
    test gives p = 0.125; 6 of 90 (p = 0.03) is worse."""
    ids = [f"e{i}" for i in range(90)]
    for lost, verdict in ((4, NOISE), (5, NOISE), (6, WORSE)):
        (change,) = compare_reports(
            report("v1", ids, [1.0] * 90), report("v2", ids, [0.0] * lost + [1.0] * (90 - lost))
        )
        assert change.interval[1] < 0 and change.verdict == verdict, lost


def test_a_kl_change_under_the_negligible_is_no_verdict_however_narrow_its_interval():
    """The 1e-4 floor was read off the interval's ends: a change of 9.25e-5 was 'worse'."""
    ids = IDS[:16]
    before = [0.005] * 16
    after = [k + d for k, d in zip(before, [2e-5] * 14 + [6e-4] * 2)]

    def run(name, kl):
        return with_kl(report(name, ids, BASE[:16], **{"gguf/q8_0": BASE[:16]}), ids, **{"gguf/q8_0": kl})

    (change,) = compare_kl(run("v1", before), run("v2", after))
    assert change.difference == pytest.approx(9.25e-5) and change.verdict == NOISE


def test_a_verdict_needs_the_sign_test_to_point_its_way():
    """Most examples better by a little, a few worse by a lot: the mean fell (interval below 0)
    while 20 of 25 differing examples improved. The two-sided sign test 'agreed' (p = 0.004) and the
    verdict was 'worse'; the two disagree, so it is noise."""
    ids = [f"e{i}" for i in range(40)]
    before = [0.5] * 5 + [0.6] * 20 + [0.5] * 15
    after = [0.0] * 5 + [0.62] * 20 + [0.5] * 15
    (change,) = compare_reports(report("v1", ids, before), report("v2", ids, after))
    assert change.interval[1] < 0 and change.verdict == NOISE
    (back,) = compare_reports(report("v2", ids, after), report("v1", ids, before))
    assert back.interval[0] > 0 and back.verdict == NOISE
