"""Retention intervals and the gate rules that use them: the interval covers the true retention as
often as it says, narrows with more examples, and the gates read it as documented."""

import json
import statistics

import numpy as np
import pytest

from edgetune.bench.confidence import attach_intervals, difference_interval, mean_interval, retention_interval
from edgetune.bench.gates import apply_gates, gate_failures
from edgetune.bench.settings import GatesConfig
from edgetune.config import load_recipe


def test_identical_answers_still_allow_for_differences_the_sample_could_have_missed():
    """No example differs: every resample says 1.0, yet 80 examples cannot rule out a 3.75% rate
    of differences (the rule of three), so the interval is not the point; one example, or nine,
    give no interval at all (a single example resamples to itself and would prove any gate)."""
    scores = [1.0, 0.6, 0.0, 0.8] * 20
    low, high = retention_interval(scores, scores)
    assert low == pytest.approx(1 - 3 / 80 / 0.6) and high == 1.0
    assert retention_interval([1.0] * 300, [1.0] * 300)[0] == pytest.approx(0.99)  # what proving 99% takes
    for n in (1, 9):
        assert retention_interval([1.0] * n, [1.0] * n) is None
        assert mean_interval([0.04] * n) is None and difference_interval([1.0] * n, [0.0] * n) is None
    assert difference_interval([1.0] * 50, [1.0] * 50) == (0.0, 0.0)  # no gain shown, no change


def test_no_sample_proves_more_than_a_flawless_one_of_its_size():
    """On 30 examples a target that matched everywhere got (0.90, 1.10) and one worse on a single
    example (0.99, 1.00): under `proven` the worse one passed where the identical one failed."""
    ref = [1.0, 0.8, 0.6, 1.0, 0.8, 1.0] * 5
    worse = list(ref)
    worse[0] = 0.8
    same_low = retention_interval(ref, ref)[0]
    worse_low = retention_interval(ref, worse)[0]
    assert worse_low <= same_low == pytest.approx(1 - 3 / 30 / np.mean(ref))
    assert retention_interval(ref * 20, ref * 20)[0] > same_low  # more examples prove more


def test_too_few_examples_for_an_interval_fail_proven_gates_and_leave_significant_ones_to_the_point():
    few = {
        **target(1.0, None),
        "scores": [1.0] * 3,
        "kld_mean": 0.01,
        "kl_interval": None,
        "kl_scores": [0.01] * 3,
    }
    rules = {"min_retention": {"*": 0.99}, "max_kl": 0.05}
    failures = gate_failures(few, GatesConfig(**rules, retention_evidence="proven", kl_evidence="proven"))
    assert len(failures) == 2 and all("only 3 examples; an interval needs 10" in f for f in failures)
    significant = GatesConfig(**rules, retention_evidence="significant", kl_evidence="significant")
    assert gate_failures(few, significant) == []
    assert "only 3 examples" in gate_failures({**few, "retention": 0.5}, significant)[0]


def test_the_interval_holds_the_point_and_narrows_as_examples_grow():
    rng = np.random.default_rng(1)
    ref = rng.integers(0, 6, 90) / 5  # five-field scores, as json_fields gives
    tgt = np.where(rng.random(90) < 0.1, np.maximum(ref - 0.2, 0), ref)
    low, high = retention_interval(ref, tgt)
    point = tgt.mean() / ref.mean()
    assert low < point < high <= 1.0
    assert retention_interval(ref, tgt) == (low, high)  # seeded: one report, one interval
    # the same data 4 and 16 times over (where 3/n no longer bounds it): half the width (1 / sqrt(4))
    low4, high4 = retention_interval(np.tile(ref, 4), np.tile(tgt, 4))
    low16, high16 = retention_interval(np.tile(ref, 16), np.tile(tgt, 16))
    assert 0.4 < (high16 - low16) / (high4 - low4) < 0.6


def test_the_interval_covers_the_true_retention_about_as_often_as_it_claims():
    """Draw many held-out sets from a known population (each example keeps or loses one of five
    fields); the 90% interval must hold the population's retention in close to 90% of them."""
    rng = np.random.default_rng(7)
    population_ref = rng.integers(1, 6, 100_000) / 5
    damaged = rng.random(population_ref.size) < 0.15
    population_tgt = np.where(damaged, population_ref - 0.2, population_ref)
    truth = population_tgt.mean() / population_ref.mean()
    covered, trials = 0, 200
    for _ in range(trials):
        picks = rng.integers(0, population_ref.size, 90)
        low, high = retention_interval(population_ref[picks], population_tgt[picks], level=0.90)
        covered += low <= truth <= high
    assert 0.82 <= covered / trials <= 0.97, covered


def test_no_interval_where_retention_is_undefined():
    assert retention_interval([], []) is None
    assert retention_interval([0.0] * 10, [1.0] * 10) is None
    assert retention_interval([1.0] + [0.0] * 89, [1.0] * 90) is None  # the reference mean is 0 in ~37%
    with pytest.raises(ValueError, match="differ in length"):
        retention_interval([1.0], [1.0, 1.0])


def test_a_gain_on_few_examples_is_shown_only_when_its_interval_clears_zero():
    tuned = [1.0, 0.8, 0.6, 0.8, 1.0, 0.4] * 5  # 30 examples, as the demo's baselines use
    small = [s - 0.2 if i % 6 == 0 else s for i, s in enumerate(tuned)]  # 0.2 lower on 5 of 30
    low, high = difference_interval(tuned, small)
    assert 0 < low < 1 / 30 < high  # mean gain 0.033; every resample favours the tuned model
    mixed = [s - 0.2 if i % 6 == 0 else s + 0.2 if i % 6 == 2 else s for i, s in enumerate(tuned)]
    low, high = difference_interval(tuned, mixed)
    assert low < 0 < high  # as many examples better as worse: no gain shown
    assert difference_interval(tuned, tuned) == (0.0, 0.0)
    assert difference_interval([], []) is None


def test_a_gain_the_sign_test_cannot_back_is_not_shown():
    """5 of 30 better and none worse: the bootstrap interval clears 0, but were neither better such a
    split happens 1 time in 16 (p = 0.0625); 6 of 6 is the fewest a 95% verdict can rest on."""
    from edgetune.bench.confidence import _gain, sign_test_p

    tuned = [1.0, 0.8, 0.6, 0.8, 1.0, 0.4] * 5
    five = [s - 0.2 if i % 6 == 0 else s for i, s in enumerate(tuned)]
    six = [s - 0.2 if i in (0, 1, 2, 3, 4, 5) else s for i, s in enumerate(tuned)]
    assert sign_test_p(tuned, five) == pytest.approx(2 / 2**5)
    assert sign_test_p(tuned, six) == pytest.approx(2 / 2**6)
    assert sign_test_p(tuned, tuned) == 1.0
    gain = _gain(tuned, five, 0.95)
    assert gain["interval"][0] > 0 and not gain["shown"]
    assert _gain(tuned, six, 0.95)["shown"]
    report = {
        "reference": {"name": "torch/merged"},
        "targets": [{"name": "torch/merged", "retention": 1.0, "scores": tuned}],
        "baselines": {"zero_shot": {"examples": 30, "scores": five}},
    }
    attach_intervals(report, 0.95)
    assert report["tuning_beats_prompting_shown"] is False


def test_a_target_that_kept_exactly_the_minimum_passes_whatever_the_rounding():
    """7 of 10 fields on 93 examples and 6 of 10 on 7, against 7 of 10 on all 100: exactly 99%,
    which mean / mean gives as 0.98999999999999999; the 99% gate failed it."""
    from edgetune.bench.metrics import json_fields

    ref = json.dumps({f"f{i}": i for i in range(10)})
    seven = json.dumps({f"f{i}": i if i < 7 else -1 for i in range(10)})
    six = json.dumps({f"f{i}": i if i < 6 else -1 for i in range(10)})
    merged = [json_fields(seven, ref)] * 100
    exported = [json_fields(six, ref)] * 7 + [json_fields(seven, ref)] * 93
    retention = float(np.mean(exported)) / float(np.mean(merged))
    assert retention < 0.99  # the rounding this is about
    for rule in ("measured", "significant", "proven"):
        gates = GatesConfig(min_retention={"*": 0.99}, retention_evidence=rule)
        assert gate_failures(target(retention, [retention, retention]), gates) == [], rule
    gates = GatesConfig(min_retention={"*": 0.99})
    assert gate_failures(target(0.9899, None), gates)  # a real shortfall still fails


def target(retention, interval, quant="q8_0"):
    return {
        "name": f"gguf/{quant}",
        "device": "cpu",
        "format": "gguf",
        "quant": quant,
        "retention": retention,
        "retention_interval": interval,
        "retention_confidence": 0.95,
        "size_bytes": 10**6,
    }


@pytest.mark.parametrize(
    "rule, retention, interval, fails",
    [
        ("measured", 0.975, [0.95, 0.995], True),  # below the minimum: fails, inside the noise or not
        ("measured", 0.985, [0.96, 1.0], False),
        ("significant", 0.975, [0.95, 0.995], False),  # the shortfall is within the noise
        ("significant", 0.95, [0.92, 0.975], True),  # the whole interval is below 98%
        ("proven", 0.985, [0.96, 1.0], True),  # 98% is not shown: the interval reaches below it
        ("proven", 0.995, [0.985, 1.0], False),
    ],
)
def test_each_retention_rule_reads_the_interval_as_documented(rule, retention, interval, fails):
    gates = GatesConfig(min_retention={"q8_0": 0.98}, retention_evidence=rule)
    failures = gate_failures(target(retention, interval), gates)
    assert bool(failures) == fails, failures
    if fails:
        assert "95% interval" in failures[0] and "98%" in failures[0]


def test_without_an_interval_proven_fails_and_significant_reads_the_measured_figure():
    gates = GatesConfig(min_retention={"*": 0.9}, retention_evidence="significant")
    (failure,) = gate_failures(target(0.99, None), gates)
    assert "no confidence interval" in failure and "no per-example scores" in failure  # an older report
    # a reference that rarely scores gives no interval: "beyond noise" reads the measured figure
    assert gate_failures({**target(0.99, None), "scores": [1.0] * 10}, gates) == []
    (failure,) = gate_failures({**target(0.8, None), "scores": [1.0] * 10}, gates)
    assert failure == "retention 80.0% < 90% (the reference scores 0 on too many resamples)"
    proven = GatesConfig(min_retention={"*": 0.9}, retention_evidence="proven")
    (failure,) = gate_failures({**target(0.99, None), "scores": [1.0] * 10}, proven)
    assert "no confidence interval" in failure and "reference scores 0 on too many resamples" in failure


def test_verdicts_inside_the_noise_get_a_note():
    report = {
        "targets": [
            target(0.985, [0.96, 1.0]),  # passes 98%, but 98% is inside its interval
            target(0.99, [0.97, 1.0], quant="q4_k_m"),  # 95% is below the whole interval: settled
        ]
    }
    apply_gates(report, GatesConfig(min_retention={"q8_0": 0.98, "q4_k_m": 0.95}))
    q8, q4 = report["targets"]
    assert q8["gate"] == "pass" and "inside the 95% interval 96.0%-100.0%" in q8["gate_notes"][0]
    assert q4["gate"] == "pass" and q4["gate_notes"] == []
    assert (
        report["gate_rule"]["retention_evidence"] == "measured" and report["gate_rule"]["confidence"] == 0.95
    )
    apply_gates(report, GatesConfig(min_retention={"q8_0": 0.99}, retention_evidence="significant"))
    assert q8["gate"] == "pass" and "passes although retention 98.5% < 99%" in q8["gate_notes"][0]


def test_bad_gate_settings_are_named(tmp_path):
    from edgetune.errors import ConfigError

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "data: {train: d.jsonl}\nbench:\n  gates:\n    min_retention: {q8_0: 98}\n    confidence: 1.0\n"
    )
    with pytest.raises(ConfigError) as err:
        load_recipe(str(recipe))
    assert "bench.gates.confidence" in str(err.value) and "bench.gates.min_retention.q8_0" in str(err.value)
    recipe.write_text("data: {train: d.jsonl}\nbench: {gates: {min_retention: {'*': 0}}}\n")
    assert load_recipe(str(recipe)).bench.gates.min_retention == {"*": 0}  # 0: retention must be known
    # a key that names no quant would gate nothing and pass: refused; a quant's case does not matter
    recipe.write_text("data: {train: d.jsonl}\nbench: {gates: {min_retention: {q8-0: 0.9}, max_kl: 0}}\n")
    with pytest.raises(ConfigError) as err:
        load_recipe(str(recipe))
    assert "bench.gates.min_retention.q8-0: names no export quant" in str(err.value)
    assert "bench.gates.max_kl: must be > 0" in str(err.value)
    gates = GatesConfig(min_retention={"Q8_0": 1.0})
    assert gate_failures({"quant": "q8_0", "retention": 0.99, "size_bytes": 1}, gates) == [
        "retention 99.0% < 100%"
    ]


def test_the_printed_table_shows_the_interval_and_the_noise_note():
    from rich.console import Console

    from edgetune.bench.report import print_table

    q8 = target(0.985, [0.96, 1.0])
    q8.update(task_metric={"value": 0.75}, gate="pass", gate_notes=["passes 98% on retention 98.5%, but ..."])
    report = {"reference": {"metric": "json_fields", "examples": 90}, "targets": [q8]}
    console = Console(record=True, width=200)
    print_table(report, console)
    text = console.export_text()
    assert "interval" in text and "96.0%-100.0%" in text
    assert "gate within noise: gguf/q8_0 (cpu): passes 98% on retention 98.5%" in text


def test_the_mean_kl_interval_holds_the_mean_and_one_bad_example_widens_it():
    steady = [0.01 + 0.001 * (i % 5) for i in range(16)]
    low, high = mean_interval(steady)
    assert low <= statistics.mean(steady) <= high and high - low < 0.003
    assert mean_interval([0.02] * 10) == pytest.approx(
        (0.02, 0.02)
    )  # the same KL everywhere (0 for identical models)
    assert mean_interval([]) is None
    spiked = steady[:-1] + [0.5]  # one example the quantisation broke
    low, high = mean_interval(spiked)
    assert low < statistics.mean(spiked) < high and high - low > 0.05


def kl_target(kl, interval):
    return {**target(1.0, [1.0, 1.0]), "kld_mean": kl, "kl_interval": interval, "kl_confidence": 0.95}


@pytest.mark.parametrize(
    "rule, kl, interval, fails",
    [
        ("measured", 0.012, [0.008, 0.02], True),  # above the limit: fails, inside the noise or not
        ("measured", 0.009, [0.006, 0.013], False),
        ("significant", 0.012, [0.008, 0.02], False),  # the excess is within the noise
        ("significant", 0.03, [0.02, 0.05], True),  # the whole interval is above 0.01
        ("proven", 0.009, [0.006, 0.013], True),  # <= 0.01 is not shown: the interval reaches above
        ("proven", 0.005, [0.004, 0.008], False),
    ],
)
def test_each_kl_rule_reads_the_interval_as_documented(rule, kl, interval, fails):
    gates = GatesConfig(max_kl=0.01, kl_evidence=rule)
    failures = gate_failures(kl_target(kl, interval), gates)
    assert bool(failures) == fails, failures
    if fails:
        assert "95% interval" in failures[0] and "0.01" in failures[0]


def test_kl_rules_that_need_an_interval_fail_without_one_and_noise_gets_a_note():
    (failure,) = gate_failures(kl_target(0.001, None), GatesConfig(max_kl=0.01, kl_evidence="proven"))
    assert "no confidence interval for gates.kl_evidence" in failure
    report = {"targets": [kl_target(0.009, [0.006, 0.013]), kl_target(0.012, [0.008, 0.02])]}
    apply_gates(report, GatesConfig(max_kl=0.01))
    inside, above = report["targets"]
    assert (
        inside["gate"] == "pass"
        and "passes max_kl 0.01 on KL 0.009, but 0.01 lies inside" in inside["gate_notes"][0]
    )
    assert above["gate"] == "fail" and "fails max_kl 0.01" in above["gate_notes"][0]
    apply_gates(report, GatesConfig(max_kl=0.01, kl_evidence="significant"))
    assert above["gate"] == "pass" and "passes although KL 0.012 > 0.01" in above["gate_notes"][0]


def test_attach_intervals_gives_each_target_with_kl_scores_its_kl_interval():
    reference = {**target(1.0, None), "name": "torch/merged", "format": "torch", "scores": [1.0, 0.5, 1.0]}
    quant = {**target(0.8, None), "scores": [1.0, 0.5, 0.9], "kld_mean": 0.02, "kl_scores": [0.01, 0.03] * 5}
    report = {"reference": {"name": "torch/merged"}, "targets": [reference, quant]}
    attach_intervals(report, 0.9)
    assert "kl_interval" not in reference
    low, high = quant["kl_interval"]
    assert 0.01 <= low <= 0.02 <= high <= 0.03 and quant["kl_confidence"] == 0.9


def test_on_too_few_examples_the_reference_gets_no_interval_either():
    """5 examples: the reference showed 100.0%-100.0% beside '-' for a byte-identical export, under
    a note saying no figure on fewer than 10 examples gets an interval."""
    scores = [1.0, 0.5, 0.0, 1.0, 0.5]
    report = {
        "reference": {"name": "torch/merged"},
        "targets": [
            {"name": "torch/merged", "retention": 1.0, "scores": scores},
            {"name": "onnx/fp32", "retention": 1.0, "scores": scores},
        ],
    }
    attach_intervals(report, 0.95)
    assert [t["retention_interval"] for t in report["targets"]] == [None, None]
    report["targets"] = [{**t, "scores": t["scores"] * 2} for t in report["targets"]]
    attach_intervals(report, 0.95)
    assert report["targets"][0]["retention_interval"] == [1.0, 1.0]
