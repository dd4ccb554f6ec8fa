"""Task metrics: each scores [0, 1], and a held-out answer a metric cannot read is refused up front."""

import pytest

from edgetune.bench.metrics import choice, exact, json_fields, normalized, rouge_l, unscorable


def test_each_metric_on_a_hit_a_miss_and_partial_credit():
    assert exact(" Paris\n", "Paris") == 1.0 and exact("paris", "Paris") == 0.0
    assert normalized("  PARIS!", "paris") == 1.0
    ref = '{"device": "router", "severity": "error"}'
    assert json_fields('```json\n{"device": "router", "severity": "error"}\n```', ref) == 1.0
    assert json_fields('Sure: {"device": "router", "severity": "warn"} done', ref) == 0.5
    assert json_fields("no json here", ref) == 0.0
    assert rouge_l("the cat sat", "the cat sat") == 1.0 and 0 < rouge_l("the cat", "the cat sat") < 1


@pytest.mark.parametrize(
    "prediction, score",
    [
        ('Empty fields are {}. Answer: {"device": "router", "severity": "error"}', 1.0),
        ('Like {"device": "x"} here: {"device": "router", "severity": "error"}', 1.0),
        # of two guesses with the same fields the first counts: a second guess earns nothing
        ('{"device": "switch", "severity": "warn"} or {"device": "router", "severity": "error"}', 0.0),
        ('{"note": {"device": "router", "severity": "error"}}', 0.0),  # an inner object is not the answer
        ('{"a": 1} {broken {"device": "router"}', 0.5),
        # a list of one call, a tool call's usual form, scored 0 bare and 1 after prose
        ('[{"device": "router", "severity": "error"}]', 1.0),
        ('```json\n[{"device": "router", "severity": "error"}]\n```', 1.0),
        ('[{"device": "router", "severity": "error"}, {"device": "x"}]', 0.0),  # which one would count?
    ],
)
def test_json_fields_scores_the_object_that_answers(prediction, score):
    assert json_fields(prediction, '{"device": "router", "severity": "error"}') == score


@pytest.mark.parametrize(
    "prediction, reference, score",
    [
        ("B) Paris", "B) Paris", 1.0),  # the option label is what is compared
        ("b. because it is the capital", "B) Paris", 1.0),
        ("C) Lyon", "B) Paris", 0.0),
        ("Paris, of course", "Paris", 1.0),
        ("", "B", 0.0),
        ("New Jersey", "New York", 0.0),  # no label: the whole answer must lead the prediction
        ("new york city, of course", "New York", 1.0),
        ("A cat", "A dog", 0.0),  # "A" and "I" open sentences; they are labels only before ")" "." ":"
        ("I disagree", "I agree", 0.0),
        ("10", "10) red", 1.0),  # labels of two digits
        ("1", "10) red", 0.0),
        ("(b)", "B", 1.0),
        ("3.14", "3.14", 1.0),  # a number, not option 3
        ("3", "3.14", 0.0),
        ("1:30 pm", "1:30 pm", 1.0),
        ("2.5 kg", "2.5 kg", 1.0),
    ],
)
def test_choice_compares_the_option_label(prediction, reference, score):
    assert choice(prediction, reference) == score


def test_answers_a_metric_cannot_read_are_named():
    assert unscorable("json_fields", '{"a": 1}') is None
    for answer in ("plain words", "[1, 2]", "{}"):
        assert "not one" in unscorable("json_fields", answer)
    assert "has none" in unscorable("choice", "?!")
    assert unscorable("exact", "anything") is None


def test_json_fields_compares_json_values_not_python_ones():
    """true is not 1 and false is not 0; 1.0 is 1; nested objects in any key order; prose with a
    brace before the object still finds the object."""
    assert json_fields('{"port": true, "site": 0}', '{"port": 1, "site": false}') == 0.0
    assert json_fields('{"port": 1.0, "up": false}', '{"port": 1, "up": false}') == 1.0
    assert json_fields('{"x": {"b": [1, true], "a": 1}}', '{"x": {"a": 1, "b": [1, true]}}') == 1.0
    assert json_fields('{"x": {"b": [1, 1], "a": 1}}', '{"x": {"a": 1, "b": [1, true]}}') == 0.0
    assert json_fields('Result {see below}: {"a": 1}', '{"a": 1}') == 1.0


def test_kl_of_distributions_that_give_a_token_no_probability_is_finite():
    """0 log 0 is 0: a model compared with itself had KL NaN where a logit was -inf (failed as
    'the target's distributions overflow'); a target that gives 0 where the reference does not is inf."""
    import numpy as np

    from edgetune.bench.accuracy import kl_top1, log_softmax

    logits = np.random.default_rng(0).normal(size=(4, 5))
    logits[:, -1] = -np.inf
    a = log_softmax(logits)
    assert kl_top1(a, a) == (0.0, 1.0)
    b = log_softmax(np.where(np.arange(5) == 0, -np.inf, np.random.default_rng(0).normal(size=(4, 5))))
    assert kl_top1(a, b)[0] == np.inf
    # two near-equal distributions: each position's KL is at least 0, where rounding made it -1e-10
    c = a.copy()
    c[:, 0] += 1e-9
    assert kl_top1(a, log_softmax(c))[0] >= 0 and kl_top1(log_softmax(c), a)[0] >= 0


def test_metrics_read_any_script_and_keep_numbers_whole():
    """normalized stripped ASCII punctuation only ('答案是北京。' missed '答案是北京'), choice missed a
    full-width label ('B）巴黎'), rouge_l read a Chinese sentence as one word (exact match); and
    stripping '-', '.' and ',' made -5 equal 5, 3.14 equal 314."""
    assert normalized("答案是北京。", "答案是北京") == 1.0 and normalized("نعم؟", "نعم") == 1.0
    assert normalized("«Oui»", "oui") == 1.0 and normalized("ＰＡＲＩＳ", "paris") == 1.0
    assert choice("B）巴黎", "B) Paris") == 1.0 and choice("（ｂ）", "B") == 1.0
    assert choice("10.5", "10) red") == 0.0 and choice("Because", "B) Paris") == 0.0
    for marked in ("**B**", '"B"', "[B] Paris", "*B) Paris*"):  # markup around the label
        assert choice(marked, "B) Paris") == 1.0, marked
    assert choice("Déjà vu", "D) Jamais vu") == 0.0  # a word's first letter, in any script
    assert rouge_l("今天天气很好，我们去公园", "今天天气很好我们去公园") == 1.0
    assert 0 < rouge_l("今天天气很好", "今天天气不好") < 1
    for a, b in (("-5", "5"), ("3.14", "314"), ("1,000", "1000"), ("+1", "1")):
        assert normalized(a, b) == 0.0, (a, b)
    assert normalized("It costs -5.", "it costs -5") == 1.0 and normalized("well-known", "wellknown") == 1.0
    # case folded, not lowered ("ß" is "ss"), and invisible format characters go: a zero-width
    # space or soft hyphen a model copies from its data is no difference a reader sees
    assert normalized("STRASSE", "Straße") == 1.0 and normalized("a\u200bb", "ab") == 1.0
    assert normalized("co\u00adoperate", "cooperate") == 1.0 and normalized("Strasse", "Strassen") == 0.0
