"""The few-shot baseline prompts the base model fairly: shots training used whole, of several
answers, never showing the answer scored, in the form training saw, within the model's context."""

from __future__ import annotations

from types import SimpleNamespace

from conftest import CHATML

from edgetune.bench.accuracy import build_cases
from edgetune.bench.prompting import few_shot_cases, pick_shots, prompting_baselines
from edgetune.bench.settings import BenchConfig
from edgetune.data.render import Renderer
from edgetune.data.rows import Example


def chat(user: str, answer: str, line: int = 1) -> Example:
    return Example("messages", messages=(("user", user), ("assistant", answer)), source=f"t.jsonl:{line}")


def test_a_reply_of_weight_0_after_the_scored_one_is_not_shown_to_the_base_model(tiny_tokenizer):
    """Few-shot cut the conversation before its last reply, where zero-shot and the reference take
    the last learnt one: a later reply of weight 0 put the answer scored into the prompt."""
    renderer = Renderer(tiny_tokenizer, max_seq_len=256)
    messages = (
        ("user", "router lost uplink"),
        ("assistant", "ANSWER"),
        ("user", "thanks"),
        ("assistant", "np"),
    )
    ex = Example("messages", messages=messages, untrained=(3,), source="t.jsonl:1")
    (case,) = build_cases(renderer, [ex])
    assert case.reference == "ANSWER"
    (shot,) = few_shot_cases(renderer, [chat("shot question", "SHOT")], [case])
    prompt = tiny_tokenizer.decode(shot.prompt_ids)
    assert "ANSWER" not in prompt and "thanks" not in prompt and "SHOT" in prompt
    assert prompt.endswith(tiny_tokenizer.decode(case.prompt_ids))  # the zero-shot prompt, after the shots


def test_plain_shots_end_as_training_rows_do_so_the_base_model_may_stop(base_tokenizer):
    """Plain prompt+answer blocks had no EOS: the base model answered, then wrote the next block
    up to max_new_tokens, and a right answer scored 0 (SmolLM2: 3 of 3 right, scored 0.0)."""
    renderer = Renderer(base_tokenizer, max_seq_len=256)
    shot = Example("prompt_completion", prompt="Q: capital of France?\nA:", completion=" Paris", source="t:1")
    test = Example("prompt_completion", prompt="Q: capital of Italy?\nA:", completion=" Rome", source="t:2")
    assert not renderer.uses_chat(test)
    (case,) = build_cases(renderer, [test])
    (prompted,) = few_shot_cases(renderer, [shot], [case])
    eos = base_tokenizer.eos_token
    text = base_tokenizer.decode(prompted.prompt_ids)
    assert f"Q: capital of France?\nA: Paris{eos}\n\nQ: capital of Italy?\nA:" in text, text


def test_shots_are_seeded_of_several_answers_and_rows_training_used_whole(tiny_tokenizer):
    """The first k rows were taken: on a file sorted by answer, k shots of one label; a row tune
    dropped as too long, or one the chat template refused, could be a shot (and crash bench)."""
    import copy

    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = (
        "{% for message in messages %}{% if message['content'] == 'refused' %}{{ raise_exception('no') }}"
        "{% endif %}{% endfor %}" + CHATML
    )
    renderer = Renderer(tok, max_seq_len=48)
    by_label = [chat(f"log line {i}", label, i) for label in ("alpha", "beta", "gamma") for i in range(20)]
    unusable = [chat("router " * 60, "delta", 98), chat("refused", "epsilon", 99)]
    assert renderer.encode(unusable[0]).dropped  # too long for training
    shots = pick_shots(renderer, unusable + by_label, 3, seed=1234)
    assert sorted(s.reference() for s in shots) == ["alpha", "beta", "gamma"]
    assert pick_shots(renderer, unusable + by_label, 3, seed=1234) == shots  # the same on every bench
    assert pick_shots(renderer, unusable + by_label, 3, seed=7) != shots
    assert pick_shots(renderer, unusable, 3, seed=1234) == []
    # fewer answers than k: the rest are rows of answers already taken
    two = pick_shots(renderer, by_label[:40], 3, seed=1234)
    assert len(two) == 3 and {s.reference() for s in two} == {"alpha", "beta"}


def test_few_shot_prompts_past_the_base_models_positions_are_no_baseline(tiny_tokenizer):
    renderer = Renderer(tiny_tokenizer, max_seq_len=512)
    held_out = [chat(f"question {i}", "yes", i) for i in range(4)]
    cases = build_cases(renderer, held_out)
    prepared = SimpleNamespace(
        renderer=renderer,
        splits=SimpleNamespace(train=[chat(f"question {j} " + "shot " * 30, "no", 9 + j) for j in range(3)]),
    )
    scored = SimpleNamespace(value=0.5, ppl=None, eos_rate=1.0, wall_s=0.0, outputs=[], scores=[0.5] * 4)

    def baselines(context: int) -> tuple[dict, list[str]]:
        warned: list[str] = []
        runner = SimpleNamespace(context=context)
        cfg = BenchConfig(max_new_tokens=32, few_shot_k=3)
        out = prompting_baselines(
            None, runner, prepared, cases, cfg, lambda *a, **k: (scored, None), scored, 1234, warned.append
        )
        return out, warned

    roomy, warned = baselines(4096)
    assert {"few_shot_3", "similar_shot_3"} <= set(roomy) and warned == []
    tight, warned = baselines(60)
    assert list(tight) == ["zero_shot"]
    fixed, similar = warned
    assert (
        fixed.startswith("no few-shot baseline: 3 shots make prompts of up to ") and "60 positions" in fixed
    )
    assert similar.startswith("no similar-shot baseline: 3 shots make prompts of up to ")


def test_the_prompting_gate_reads_the_evidence_it_is_told_to():
    """One example of 30 decided: the point verdict failed a tuned model a prompt beat by 0.033
    (interval -0.100 to 0) and passed one that beat the prompt by as little, while the report
    called the win within noise and the loss nothing."""
    from edgetune.bench.confidence import attach_intervals
    from edgetune.bench.gates import prompting_failure
    from edgetune.bench.report import prompting_lines

    def report(tuned: list[float], prompted: list[float]) -> dict:
        n = len(tuned)
        out = {
            "reference": {"name": "torch/merged", "metric": "exact"},
            "targets": [{"name": "torch/merged", "scores": tuned, "retention": 1.0}],
            "baselines": {
                "few_shot_3": {
                    "task_metric": {"value": sum(prompted) / n},
                    "tuned_on_these": sum(tuned) / n,
                    "examples": n,
                    "scores": prompted,
                }
            },
            "tuning_beats_prompting": sum(tuned) > sum(prompted),
        }
        attach_intervals(out, 0.95)
        return out

    one_worse = report([1.0] * 14 + [0.0] * 16, [1.0] * 15 + [0.0] * 15)
    assert prompting_failure(one_worse, "measured").startswith(
        "the tuned model does not beat prompting its base"
    )
    assert prompting_failure(one_worse, "significant") is None  # within noise
    assert prompting_failure(one_worse, "proven").startswith("the tuned model is not shown to beat prompting")
    assert prompting_lines(one_worse)[-1] == (
        "fine-tuning does NOT beat 3-shot prompting of its base on this task; but within these examples' "
        "noise (an interval reaches 0, or too few examples differ): fine-tuning may still be worth it"
    )
    far_worse = report([0.0] * 30, [1.0] * 20 + [0.0] * 10)
    assert far_worse["prompting_beats_tuning_shown"] is True
    assert "beyond noise" in prompting_failure(far_worse, "significant")
    assert prompting_lines(far_worse)[-1].endswith("on this task; beyond these examples' noise")
    one_better = report([1.0] * 16 + [0.0] * 14, [1.0] * 15 + [0.0] * 15)
    assert (
        prompting_failure(one_better, "measured") is None
        and prompting_failure(one_better, "significant") is None
    )
    assert prompting_failure(one_better, "proven") is not None
    few = report([0.0] * 5, [1.0] * 5)  # too few examples for an interval: the point figure decides
    assert few["prompting_beats_tuning_shown"] is None
    assert prompting_failure(few, "significant") == (
        "the tuned model does not beat prompting its base (few shot 3 scores 1.000 against 0.000)"
    )
    assert "no confidence interval for gates.prompting_evidence" in prompting_failure(few, "proven")
    far_better = report([1.0] * 30, [0.0] * 30)
    assert all(prompting_failure(far_better, e) is None for e in ("measured", "significant", "proven"))


ALTERNATING = (  # Llama 2's and Mistral's rule: user and assistant turns in turn, the user's first
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% endfor %}" + CHATML
)


def test_shots_keep_a_template_that_wants_turns_in_turn_rendering(tiny_tokenizer):
    """A row ending in a user's "thanks", or opening with a greeting, trains whole; chained as shots
    it put two user turns side by side, and a template like Mistral's refused: bench crashed."""
    import copy

    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = ALTERNATING
    renderer = Renderer(tok, max_seq_len=128)
    thanks = Example(
        "messages", messages=(("user", "q1"), ("assistant", "a1"), ("user", "thanks")), source="t:1"
    )
    greeting = Example(
        "messages", messages=(("assistant", "hello"), ("user", "q2"), ("assistant", "a2")), source="t:2"
    )
    chatml = Renderer(tiny_tokenizer, max_seq_len=128)  # which takes the greeting first
    assert chatml.encode(greeting).dropped is None and renderer.encode(thanks).dropped is None
    assert greeting not in pick_shots(chatml, [thanks, greeting, chat("q3", "a3", 3)], 3, seed=1)
    shots = pick_shots(renderer, [thanks, greeting, chat("q3", "a3", 3)], 3, seed=1)
    assert thanks in shots and greeting not in shots
    cases = build_cases(renderer, [chat("test question", "yes", 4)])
    (prompted,) = few_shot_cases(renderer, shots, cases)  # rendered: turns alternate
    assert "thanks" not in tok.decode(prompted.prompt_ids)


def test_a_template_that_refuses_the_chained_shots_leaves_no_few_shot_baseline_not_no_bench(tiny_tokenizer):
    import copy

    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = (
        "{% if messages | length > 2 %}{{ raise_exception('one exchange only') }}{% endif %}" + CHATML
    )
    renderer = Renderer(tok, max_seq_len=128)
    cases = build_cases(renderer, [chat(f"question {i}", "yes", i) for i in range(3)])
    prepared = SimpleNamespace(
        renderer=renderer,
        splits=SimpleNamespace(train=[chat("question shot", "no", 9), chat("other", "no", 10)]),
    )
    scored = SimpleNamespace(value=0.5, ppl=None, eos_rate=1.0, wall_s=0.0, outputs=[], scores=[0.5] * 3)
    warned: list[str] = []
    out = prompting_baselines(
        None,
        SimpleNamespace(context=4096),
        prepared,
        cases,
        BenchConfig(max_new_tokens=8),
        lambda *a, **k: (scored, None),
        scored,
        1234,
        warned.append,
    )
    assert list(out) == ["zero_shot"]
    assert warned == [
        f"no {label} baseline: the chat template refuses the shots put before a test prompt "
        "(chat template: one exchange only)"
        for label in ("few-shot", "similar-shot")
    ]


def test_similar_shots_are_the_usable_training_rows_most_like_each_prompt(tiny_tokenizer):
    """The fixed shots are the same three rows for every prompt; a retrieval step would show each
    prompt the rows asked most alike, and the base model copies their answers' form and labels."""
    from edgetune.bench.prompting import SimilarShots

    renderer = Renderer(tiny_tokenizer, max_seq_len=48)
    topics = {"printer": "paper jam in tray", "router": "uplink lost on wan", "lock": "battery low on door"}
    train = [
        chat(f"{device} {i}: {what}", f"{device}-label", line=10 * n + i)
        for n, (device, what) in enumerate(topics.items())
        for i in range(4)
    ]
    too_long = chat("router uplink lost on wan " * 30, "router-label", 99)
    assert renderer.encode(too_long).dropped  # the most alike, but no example training used whole
    index = SimilarShots(renderer, [too_long, *train])
    asked = chat("router 7: uplink lost on wan again", "?", 100)
    shots = index.nearest(asked, 3)
    assert [s.reference() for s in shots] == ["router-label"] * 3 and too_long not in shots
    lock = index.nearest(chat("door lock battery low", "?", 101), 2)
    assert {s.reference() for s in lock} == {"lock-label"}
    # the most similar last, nearest the question; ties in file order: the same on every bench
    exact = chat("printer 2: paper jam in tray, again", "?", 102)
    assert index.nearest(exact, 2)[-1] == train[2] and index.nearest(exact, 2) == index.nearest(exact, 2)
    assert index.nearest(exact, 0) == [] and SimilarShots(renderer, []).nearest(exact, 3) == []
    punctuation_only = [chat("?!", "x", 1), chat("...", "y", 2)]  # no words: no index, no shots
    assert SimilarShots(renderer, punctuation_only).nearest(asked, 1) == []
    # no word in common with any row: BM25 would rank the rows in file order (the caller takes the
    # fixed shots instead)
    assert index.nearest(chat("zzz qqq", "?", 103), 3) == []
    # a training row asking exactly what the test row asks (drop_overlap off) would give its answer away
    twin = chat("Router 7: uplink lost on WAN, again!", "router-label", 104)  # case and punctuation aside
    assert twin not in SimilarShots(renderer, [twin, *train]).nearest(asked, 3)
    # only the twin, or only a row no shot may be, shares its words: nothing similar is left, and
    # the rows sharing none would come in file order (the caller takes the fixed shots)
    assert SimilarShots(renderer, [*train, twin]).nearest(
        chat("router 7 uplink lost on wan again", "?", 5), 2
    )
    lone_twin = chat("quokka wombat?", "zoo", 105)
    assert SimilarShots(renderer, [*train, lone_twin]).nearest(chat("Quokka wombat", "?", 6), 2) == []
    lone_long = chat("quokka " * 60, "zoo", 106)
    assert SimilarShots(renderer, [*train, lone_long]).nearest(chat("quokka", "?", 7), 2) == []
    # Chinese has no spaces: each character is a word, or a whole clause would match nothing
    chinese = [
        chat("打印机卡纸了", "printer", 1),
        chat("路由器断线", "router", 2),
        chat("门锁电池低", "lock", 3),
    ]
    (shot,) = SimilarShots(renderer, chinese).nearest(chat("路由器又断线了", "?", 4), 1)
    assert shot.reference() == "router"


def test_the_similar_shot_baseline_gives_each_prompt_its_own_shots(tiny_tokenizer):
    renderer = Renderer(tiny_tokenizer, max_seq_len=128)
    train = [
        chat(f"{w} alarm {i}", w.upper(), 10 * n + i)
        for n, w in enumerate(("fire", "flood"))
        for i in range(3)
    ]
    cases = build_cases(renderer, [chat("fire alarm on floor 3", "FIRE", 1), chat("flood alarm", "FLOOD", 2)])
    prepared = SimpleNamespace(renderer=renderer, splits=SimpleNamespace(train=train))
    scored = SimpleNamespace(value=0.5, ppl=None, eos_rate=1.0, wall_s=0.0, outputs=[], scores=[0.5] * 2)
    prompts: dict[str, list[str]] = {}

    def run_accuracy(base, target_cases, runner, perplexity=True):
        prompts[f"run {len(prompts)}"] = [tiny_tokenizer.decode(c.prompt_ids) for c in target_cases]
        return scored, None

    def baselines(**settings) -> dict:
        prompts.clear()
        cfg = BenchConfig(**{"max_new_tokens": 8, "few_shot_k": 2, **settings})
        return prompting_baselines(
            None, SimpleNamespace(context=4096), prepared, cases, cfg, run_accuracy, scored, 1234, print
        )

    out = baselines()
    assert list(out) == ["zero_shot", "few_shot_2", "similar_shot_2"]
    _, fixed, similar = prompts.values()
    assert fixed[0].rsplit("fire alarm on floor 3", 1)[0] == fixed[1].rsplit("flood alarm", 1)[0]  # alike
    assert similar[0].count("FIRE") == 2 and "FLOOD" not in similar[0]
    assert similar[1].count("FLOOD") == 2 and "FIRE" not in similar[1]
    assert out["similar_shot_2"]["extra_prompt_tokens"] > 0 and out["similar_shot_2"]["examples"] == 2
    # a prompt no training row shares a word with gets the fixed shots, not the file's first rows
    mixed = build_cases(renderer, [chat("quake", "QUAKE", 3), chat("fire alarm", "FIRE", 4)])
    said: list[str] = []

    def mixed_baselines(held_out) -> dict:
        prompts.clear()
        cfg = BenchConfig(max_new_tokens=8, few_shot_k=2)
        runner = SimpleNamespace(context=4096)
        return prompting_baselines(
            None, runner, prepared, held_out, cfg, run_accuracy, scored, 1234, said.append
        )

    assert "similar_shot_2" in mixed_baselines(mixed)
    _, fixed, similar = prompts.values()
    assert similar[0] == fixed[0] and similar[1] != fixed[1]
    # where every prompt would take the fixed shots, the same baseline is not run twice: said
    assert list(mixed_baselines(mixed[:1])) == ["zero_shot", "few_shot_2"] and said == [
        "no similar-shot baseline: no test prompt shares a word with a training row that may be a shot"
    ]
    assert list(baselines(few_shot_similar=False)) == ["zero_shot", "few_shot_2"]
    assert list(baselines(few_shot_k=0)) == ["zero_shot"]


def test_the_verdict_names_every_prompt_tried():
    from edgetune.bench.report import prompting_lines

    def baseline(value: float) -> dict:
        return {"task_metric": {"value": value}, "tuned_on_these": 0.9, "examples": 30}

    report = {
        "reference": {"metric": "exact"},
        "baselines": {
            "zero_shot": baseline(0.1),
            "few_shot_3": baseline(0.2),
            "similar_shot_3": baseline(0.5),
        },
        "tuning_beats_prompting": True,
    }
    lines = prompting_lines(report)
    assert lines[2].startswith("base model similar shot 3: exact 0.500 against 0.900 for the tuned model")
    assert lines[-1] == (
        "fine-tuning beats zero-shot, 3-shot and similar-row 3-shot prompting of its base on this task"
    )
    report["baselines"]["similar_shot_3"] = baseline(0.95)  # lost to one prompt: that one is named
    report["tuning_beats_prompting"] = False
    assert prompting_lines(report)[-1] == (
        "fine-tuning does NOT beat similar-row 3-shot prompting of its base on this task (it beats "
        "zero-shot and 3-shot)"
    )
