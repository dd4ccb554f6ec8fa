import json

import pytest
from conftest import chat_row, write_jsonl

from edgetune.config import DataConfig
from edgetune.data.prepare import LengthStats, prepare
from edgetune.data.split import make_splits
from edgetune.errors import DataError


def cfg(path, **kw):
    return DataConfig(train=str(path), **kw)


def sources(rows):
    return [ex.source for ex in rows]


def test_split_is_deterministic_and_seeded(tmp_path, chat_rows):
    path = write_jsonl(tmp_path / "d.jsonl", chat_rows)
    a, b = make_splits(cfg(path)), make_splits(cfg(path))
    assert sources(a.test) == sources(b.test) and sources(a.train) == sources(b.train)
    c = make_splits(cfg(path, split_seed=7))
    assert sources(c.test) != sources(a.test)
    assert a.counts() == {"train": 40, "valid": 5, "test": 5}
    everything = set(sources(a.train)) | set(sources(a.valid)) | set(sources(a.test))
    assert len(everything) == 50


def test_exact_duplicates_are_removed_and_counted(tmp_path, chat_rows):
    path = write_jsonl(tmp_path / "d.jsonl", chat_rows + chat_rows[:7])
    splits = make_splits(cfg(path))
    assert splits.duplicates_removed == {"train": 7}
    assert sum(splits.counts().values()) == 50


def test_separate_files_and_overlap_with_train_is_counted_and_dropped(tmp_path, chat_rows):
    train = write_jsonl(tmp_path / "train.jsonl", chat_rows)
    test_rows = chat_rows[:3] + [chat_row(chat_rows[3]["messages"][0]["content"], "a different answer")]
    # the same input as a training row once case and whitespace are folded: leaked as well
    test_rows.append(chat_row("  " + chat_rows[4]["messages"][0]["content"].upper().replace(" ", "\t"), "x"))
    test = write_jsonl(tmp_path / "test.jsonl", test_rows)
    valid = write_jsonl(tmp_path / "valid.jsonl", [chat_row("fresh question", "fresh answer")])
    splits = make_splits(cfg(train, valid=str(valid), test=str(test)))
    assert splits.overlap == {
        "exact": 3,
        "same_input": 1,
        "near": 1,
        "dropped_from_train": 5,
        "test_in_valid": 0,
    }
    assert splits.counts() == {"train": 45, "valid": 1, "test": 5}
    # each counted row is named, with the held-out row it repeats
    assert splits.overlap_pairs == [
        f"{train}:1 is {test}:1",
        f"{train}:2 is {test}:2",
        f"{train}:3 is {test}:3",
        f"{train}:4 asks what {test}:4 asks",
        f"{train}:5 asks what {test}:5 asks, up to case and whitespace",
    ]
    kept = make_splits(cfg(train, valid=str(valid), test=str(test), drop_overlap=False))
    assert kept.counts()["train"] == 50 and kept.overlap["exact"] == 3


def test_tune_warns_of_held_out_rows_it_trains_on(tmp_path, tiny_tokenizer, chat_rows):
    """data.drop_overlap: false trained on held-out inputs without a word: the bench then scores
    recall of trained rows as the task."""
    from edgetune.config import Recipe
    from edgetune.tune.checks import warn_about_data

    train = write_jsonl(tmp_path / "train.jsonl", chat_rows)
    test = write_jsonl(tmp_path / "test.jsonl", chat_rows[:2] + [chat_row("fresh question", "fresh answer")])
    said = {}
    for drop in (False, True):
        recipe = Recipe(data=cfg(train, test=str(test), valid_fraction=0.2, drop_overlap=drop))
        warned: list[str] = []
        warn_about_data(recipe, prepare(recipe.data, tiny_tokenizer), warned.append)
        said[drop] = [w for w in warned if "ask what a held-out row asks" in w]
    assert said[True] == []  # dropped from train: nothing leaked
    assert len(said[False]) == 1 and said[False][0].startswith("2 training examples ask"), said
    assert f"e.g. {train}:1 is {test}:1: validation loss and bench scores overstate" in said[False][0]


def test_a_held_out_question_a_longer_training_chat_opens_with_has_leaked(tmp_path, chat_rows):
    """A train chat that asks the test question first, then goes on, trains on the test answer:
    datasets expanded per turn, or ShareGPT chats cut into pieces, do this."""
    longer = {
        "messages": [
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Paris"},
            {"role": "user", "content": "And of Spain?"},
            {"role": "assistant", "content": "Madrid"},
        ]
    }
    folded = {
        "messages": [{**longer["messages"][0], "content": "what is the  capital of France?"}]
        + longer["messages"][1:]
    }
    weighted = {
        "messages": [*longer["messages"][:1], {**longer["messages"][1], "weight": 0}, *longer["messages"][2:]]
    }
    train = write_jsonl(tmp_path / "train.jsonl", [*chat_rows, longer, folded, weighted])
    test = write_jsonl(tmp_path / "test.jsonl", [chat_row("What is the capital of France?", "Paris")])
    splits = make_splits(cfg(train, test=str(test), valid_fraction=0.0))
    # the weight-0 "Paris" is context, not learnt: that chat trains on Madrid only, and is kept
    assert (splits.overlap["same_input"], splits.overlap["near"], splits.overlap["dropped_from_train"]) == (
        1,
        1,
        2,
    )
    assert sources(splits.train)[-1] == f"{train}:53"


def test_too_few_examples_to_split(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [chat_row("a", "b"), chat_row("c", "d")])
    with pytest.raises(DataError, match="too few"):
        make_splits(cfg(path))


def test_prepare_reports_lengths_and_drops(tmp_path, tiny_tokenizer, chat_rows):
    rows = chat_rows + [chat_row("battery " * 200, "ok")]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    prepared = prepare(cfg(path, max_seq_len=64, valid_fraction=0.0, test_fraction=0.0), tiny_tokenizer)
    train = prepared.encoded["train"]
    assert train.dropped == 1 and len(train.examples) == 50
    assert train.dropped_examples[0].startswith(f"{path}:51: longer than data.max_seq_len")
    assert train.lengths.count == 51 and train.lengths.max > 64
    assert train.missing_eos == 0
    summary = prepared.summary()
    assert summary["splits"]["train"]["dropped"] == 1 and "examples" not in summary["splits"]["train"]


def test_a_chat_whose_last_reply_truncation_cuts_counts_as_missing_eos(tmp_path, tiny_tokenizer, chat_rows):
    """data.truncation: truncate cut a chat's final answer (or took it whole) while an earlier
    turn's EOS made the row count as ending well: the model learnt replies without their end,
    and nothing said so."""
    long_chat = {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "describe the router"},
            {"role": "assistant", "content": "router battery " * 40 + "THE-END"},
        ]
    }
    path = write_jsonl(tmp_path / "d.jsonl", chat_rows + [long_chat])
    config = cfg(path, max_seq_len=64, truncation="truncate", valid_fraction=0.0, test_fraction=0.0)
    train = prepare(config, tiny_tokenizer).encoded["train"]
    assert train.truncated == 1 and train.missing_eos == 1
    assert train.missing_eos_examples == [f"{path}:51"]
    # cut after the stop token (its newline): the reply kept its end
    from edgetune.data.render import Renderer

    renderer = Renderer(tiny_tokenizer, max_seq_len=64, truncation="truncate")
    ex = prepare(config, tiny_tokenizer).splits.train[0]
    whole = renderer.encode(ex)
    last_stop = max(i for i, label in enumerate(whole.labels) if label in renderer.stop_ids)
    assert last_stop + 1 < whole.length  # the template's newline after the stop token is learnt too
    trimmed = Renderer(tiny_tokenizer, max_seq_len=last_stop + 1, truncation="truncate").encode(ex)
    assert trimmed.truncated and not trimmed.cut_reply
    assert Renderer(tiny_tokenizer, max_seq_len=last_stop, truncation="truncate").encode(ex).cut_reply


def test_length_stats_nearest_rank():
    s = LengthStats.of(list(range(1, 101)))
    assert (s.min, s.p50, s.p95, s.max, s.mean) == (1, 51, 95, 100, 50.5)
    assert LengthStats.of([]).count == 0


def test_held_out_files_may_use_another_conversation_layout_but_not_another_kind(tmp_path):
    alpaca = [{"instruction": f"say {i}", "output": f"{i}"} for i in range(20)]
    train = write_jsonl(tmp_path / "train.jsonl", alpaca)
    valid = write_jsonl(tmp_path / "valid.jsonl", [chat_row("fresh", "answer")])
    assert make_splits(cfg(train, valid=str(valid))).counts()["valid"] == 1
    text = write_jsonl(tmp_path / "text.jsonl", [{"text": "plain words"}])
    with pytest.raises(DataError, match=rf"{text}: its rows are text examples, but {train}'s are messages"):
        make_splits(cfg(train, valid=str(valid), test=str(text)))
    with pytest.raises(DataError, match="data.valid and data.test name the same file"):
        make_splits(cfg(train, valid=str(valid), test=str(tmp_path / "." / "valid.jsonl")))
    few = write_jsonl(tmp_path / "few.jsonl", alpaca[:2])
    with pytest.raises(DataError, match=rf"{few}: only 2 examples: too few to split"):
        make_splits(cfg(few))


def test_data_check_checks_the_splits_the_recipe_gives_tune(tmp_path):
    """DATA_FILE being the recipe's own train file, its valid and test files are checked too;
    `--set data.valid=` (or another DATA_FILE) leaves them out."""
    import json

    from click.testing import CliRunner

    from edgetune.cli import main

    write_jsonl(tmp_path / "train.jsonl", [chat_row(f"q{i}", f"a{i}") for i in range(30)])
    write_jsonl(tmp_path / "valid.jsonl", [chat_row(f"v{i}", "a") for i in range(3)])
    write_jsonl(tmp_path / "other.jsonl", [chat_row(f"o{i}", "a") for i in range(30)])
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\ndata:\n  train: train.jsonl\n  valid: valid.jsonl\n")

    def counts(*args):
        result = CliRunner().invoke(
            main, ["data", "check", *args, "--recipe", str(recipe), "--no-tokens", "--json"]
        )
        assert result.exit_code == 0, result.output
        return json.loads(result.output)["counts"]

    assert counts(str(tmp_path / "train.jsonl")) == {"train": 27, "valid": 3, "test": 3}
    assert counts("train.jsonl", "--set", "data.valid=") == {"train": 24, "valid": 3, "test": 3}
    assert counts(str(tmp_path / "other.jsonl"))["train"] == 24  # another dataset: its own splits
    # a recipe of settings only (no data.train): DATA is its data; it was refused, "data.train: required"
    recipe.write_text("name: r\ndata:\n  max_seq_len: 256\n")
    assert counts(str(tmp_path / "other.jsonl"))["train"] == 24
    tune = CliRunner().invoke(main, ["tune", str(recipe)])  # a run still needs its data named
    assert tune.exit_code == 2 and "data.train: required" in tune.output, tune.output


def test_data_check_refuses_what_tune_would_refuse_with_the_reason(tmp_path):
    from click.testing import CliRunner

    from edgetune.cli import main

    path = write_jsonl(tmp_path / "d.jsonl", [chat_row(f"question number {i} " * 8, "a") for i in range(20)])
    result = CliRunner().invoke(main, ["data", "check", str(path), "--set", "data.max_seq_len=16"])
    assert result.exit_code == 2, result.output
    assert f"{path}: every training example was dropped, e.g. {path}:" in result.output
    assert "longer than data.max_seq_len" in result.output and "data.truncation: truncate" in result.output


def test_a_plain_template_on_conversations_is_refused_not_ignored(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [chat_row(f"q{i}", f"a{i}") for i in range(20)])
    with pytest.raises(DataError, match="data.template plain joins prompt and completion"):
        prepare(cfg(path, template="plain"), tiny_tokenizer)


NO_SYSTEM_TEMPLATE = (  # Gemma's way: a system turn is an error of the template's own
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_a_row_the_chat_template_refuses_is_named_and_can_be_skipped(tmp_path):
    """A system turn on line 7 of a file for a template without one: the error names the file and
    line; --skip-bad-rows drops that row and trains on the rest; data.system_prompt is named as the
    system turn's source where it put it there."""
    from conftest import build_tokenizer

    tok = build_tokenizer(chat_template=NO_SYSTEM_TEMPLATE)
    rows = [chat_row(f"q{i}", f"a{i}") for i in range(20)]
    rows[6] = {"messages": [{"role": "system", "content": "Be brief."}, *rows[6]["messages"]]}
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    split = {"valid_fraction": 0.0, "test_fraction": 0.0}
    with pytest.raises(
        DataError, match=rf"^{path}:7: chat template: System role not supported \(data.skip_bad"
    ):
        prepare(cfg(path, **split), tok)
    prepared = prepare(cfg(path, **split), tok, skip_bad_rows=True)
    train = prepared.encoded["train"]
    # a bad row, as one that does not parse: skipped and said, out of the split's row count
    assert len(train.examples) == 19 and train.dropped == 0 and train.dropped_examples == []
    assert prepared.splits.skipped_rows == [f"{path}:7: chat template: System role not supported"]
    assert prepared.splits.counts()["train"] == 19
    with pytest.raises(
        DataError, match=r"every training row was skipped as bad.*data.system_prompt's\).*fix the rows"
    ):
        prepare(cfg(path, system_prompt="Answer tersely.", **split), tok, skip_bad_rows=True)


def test_data_check_samples_a_row_that_encoded_when_the_first_is_refused_or_dropped(tmp_path, tiny_model_dir):
    """data check --skip-bad-rows failed on its sample (an unnamed 'chat template:' error) when the
    first training row was one the template refuses."""
    import shutil

    from click.testing import CliRunner
    from conftest import build_tokenizer

    from edgetune.cli import main

    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    build_tokenizer(chat_template=NO_SYSTEM_TEMPLATE).save_pretrained(model)
    rows = [chat_row(f"q{i}", f"a{i}") for i in range(20)]
    rows[0] = {"messages": [{"role": "system", "content": "Be brief."}, *rows[0]["messages"]]}
    rows[1] = chat_row("q " * 300, "too long")
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    args = ["data", "check", str(path), "--skip-bad-rows", "--json", "--set", f"model.base={model}"]
    args += [
        "--set",
        "data.valid_fraction=0",
        "--set",
        "data.test_fraction=0",
        "--set",
        "data.max_seq_len=64",
    ]
    checked = CliRunner().invoke(main, args)
    assert checked.exit_code == 0, checked.output
    report = json.loads(checked.stdout)
    assert report["sample"]["source"] == f"{path}:3"
    assert report["skipped_bad_rows"] == 1 and report["skipped_examples"][0].startswith(f"{path}:1: chat")
    assert report["splits"]["train"]["dropped"] == 1  # the row too long for data.max_seq_len
    one_line = tmp_path / "d.json"  # a JSON array on one line: every row's source is d.json:1
    one_line.write_text(json.dumps(rows))
    checked = CliRunner().invoke(main, [*args[:2], str(one_line), *args[3:]])
    assert checked.exit_code == 0, checked.output
    assert "q2" in json.loads(checked.stdout)["sample"]["rendered"]


def test_a_greeting_before_any_prompt_is_context_not_a_refused_row(tmp_path, tiny_tokenizer):
    """A ShareGPT row opening with the assistant's greeting, under a template that adds a default
    system turn: the greeting carries no loss, the reply to the user does."""
    from edgetune.data.render import IGNORE, Renderer
    from edgetune.data.rows import Example

    default_system = NO_SYSTEM_TEMPLATE.replace(
        "{% for m in messages %}", "<|im_start|>system\nYou are helpful.<|im_end|>\n{% for m in messages %}"
    ).replace("{{ raise_exception('System role not supported') }}", "")
    from conftest import build_tokenizer

    tok = build_tokenizer(chat_template=default_system)
    turns = (("assistant", "Hello there!"), ("user", "reset the router"), ("assistant", "Done."))
    enc = Renderer(tok).encode(Example("messages", messages=turns, source="g.jsonl:5"))
    trained = tok.decode([t for t, label in zip(enc.input_ids, enc.labels) if label != IGNORE])
    assert trained == "Done.<|im_end|>\n" and enc.dropped is None
    alone = Renderer(tok).encode(Example("messages", messages=turns[:1], source="g.jsonl:6"))
    assert alone.dropped == "nothing to learn from: its only reply comes before any prompt"
    # a greeting after the row's own system turn, or after data.system_prompt's, is context too
    with_system = (("system", "Be brief."), *turns)
    for renderer, ex_turns in (
        (Renderer(tok), with_system),
        (Renderer(tok, system_prompt="Be brief."), turns),
    ):
        enc = renderer.encode(Example("messages", messages=ex_turns, source="g.jsonl:7"))
        trained = tok.decode([t for t, label in zip(enc.input_ids, enc.labels) if label != IGNORE])
        assert trained == "Done.<|im_end|>\n", trained


def test_overlap_counts_rows_sees_unicode_forms_and_refuses_a_test_file_copied_from_valid(
    tmp_path, chat_rows
):
    """With dedupe off, five copies of a leaked row are five rows dropped; an NFD copy of an NFC row
    is a duplicate and a leak; a test file holding valid's rows under another name is refused."""
    import unicodedata

    leaked = chat_row("the café router", "reset it")
    train = write_jsonl(tmp_path / "train.jsonl", chat_rows + [leaked] * 5)
    valid = write_jsonl(tmp_path / "valid.jsonl", [chat_row("fresh question", "fresh answer")])
    test = write_jsonl(tmp_path / "test.jsonl", [leaked])
    splits = make_splits(cfg(train, valid=str(valid), test=str(test), dedupe=False))
    assert splits.overlap["dropped_from_train"] == 5 and splits.counts()["train"] == 50

    decomposed = chat_row(unicodedata.normalize("NFD", "the café router"), "reset it")
    assert decomposed != leaked
    twice = write_jsonl(tmp_path / "twice.jsonl", chat_rows + [leaked, decomposed])
    assert make_splits(cfg(twice, valid=str(valid), test=str(test))).duplicates_removed["train"] == 1
    nfd_test = write_jsonl(tmp_path / "nfd.jsonl", [decomposed])
    assert make_splits(cfg(train, valid=str(valid), test=str(nfd_test))).overlap["exact"] == 1

    copy = write_jsonl(tmp_path / "copy.jsonl", [chat_row("fresh question", "fresh answer")])
    with pytest.raises(DataError, match=rf"{copy}: every test example is also in {valid}"):
        make_splits(cfg(train, valid=str(valid), test=str(copy)))


def test_only_the_splits_asked_for_are_encoded_and_they_are_as_a_full_preparation_encodes_them(
    tmp_path, chat_rows, tiny_tokenizer, monkeypatch
):
    """merge and bench encode held-out rows only: at 50,000 training rows a full preparation took
    a minute a stage. What they get is what the full one gives; the splits themselves are whole."""
    from edgetune.data.render import Renderer

    path = write_jsonl(tmp_path / "d.jsonl", chat_rows)
    full = prepare(cfg(path), tiny_tokenizer)
    assert full.splits.valid and full.splits.test
    rendered = []
    encode_many = Renderer.encode_many
    monkeypatch.setattr(
        Renderer, "encode_many", lambda self, rows: rendered.extend(rows) or encode_many(self, rows)
    )
    held = prepare(cfg(path), tiny_tokenizer, encode=("valid", "test"))
    assert len(rendered) == len(full.splits.valid) + len(full.splits.test)  # no training row rendered
    assert held.encoded["train"].examples == [] and sources(held.splits.train) == sources(full.splits.train)
    for name in ("valid", "test"):
        assert [e.input_ids for e in held.encoded[name].examples] == [
            e.input_ids for e in full.encoded[name].examples
        ]
        assert [e.labels for e in held.encoded[name].examples] == [
            e.labels for e in full.encoded[name].examples
        ]


def test_split_refusals_say_why_the_rows_are_gone(tmp_path):
    """1,000 copies of one row were "only 1 example"; one input asked 1,000 ways was "no training
    examples left" with no count; a 0.2% split was named "0% split"."""
    same = write_jsonl(tmp_path / "same.jsonl", [chat_row("q", "a")] * 1000)
    with pytest.raises(DataError, match=r"only 1 example \(999 exact duplicate rows removed, data.dedupe\)"):
        make_splits(cfg(same))
    one_input = write_jsonl(tmp_path / "one.jsonl", [chat_row("q", f"a{i}") for i in range(1000)])
    with pytest.raises(
        DataError,
        match=r"after holding out 200: 800 training rows shared an input with a held-out row .*drop_overlap",
    ):
        make_splits(cfg(one_input))
    rows = write_jsonl(tmp_path / "d.jsonl", [chat_row(f"q{i}", "a") for i in range(1000)])
    assert "(0.2% split, seed" in make_splits(cfg(rows, valid_fraction=0.002)).files["valid"]


def test_a_system_prompt_as_long_as_the_context_is_refused_by_name(tmp_path, chat_rows, tiny_tokenizer):
    """Every row was dropped as too long, with advice to truncate, then as having no tokens left."""
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"q{i}", "completion": "a"} for i in range(20)])
    for truncation in ("drop", "truncate"):
        long = cfg(
            path, system_prompt="be brief " * 40, max_seq_len=32, truncation=truncation, template="chat"
        )
        with pytest.raises(
            DataError, match=r"data.system_prompt: \d+ tokens, no shorter than data.max_seq_len 32"
        ):
            prepare(long, tiny_tokenizer)


def test_a_long_preparation_says_how_far_it_is(tmp_path, chat_rows, tiny_tokenizer, monkeypatch):
    """50,000 rows took a minute (and 200 MB ten) of preparation without a word."""
    import edgetune.data.prepare as prepare_module

    monkeypatch.setattr(prepare_module, "PROGRESS_ROWS", 20)
    path = write_jsonl(tmp_path / "d.jsonl", chat_rows)
    said: list[str] = []
    prepared = prepare(cfg(path), tiny_tokenizer, say=said.append)
    n = len(prepared.splits.train)
    assert len(said) == 10 and said[-1] == f"data: train {n:,}/{n:,} rows rendered and tokenised", said
    assert not [m for m in said if "valid" in m or "test" in m]  # 5 rows each: nothing to wait for


def test_data_check_names_the_bad_rows_and_overlaps_it_counts(tmp_path, chat_rows):
    """`data check` named the first skipped row only, and counted train/held-out overlap without
    saying which rows: a user had to find them by hand."""
    from click.testing import CliRunner

    from edgetune.cli import main

    lines = [json.dumps(r) for r in chat_rows]
    for i in (5, 9, 14, 20, 22, 30, 41):
        lines[i] = "{bad"
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(lines) + "\n")
    test = write_jsonl(tmp_path / "test.jsonl", [chat_rows[i] for i in (1, 4, 7)])
    args = [
        "data",
        "check",
        str(train),
        "--test",
        str(test),
        "--no-tokens",
        "--set",
        "data.skip_bad_rows=true",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    out = result.output
    for line in (6, 10, 15, 21, 23):
        assert f"{train}:{line}: invalid JSON" in out
    assert f"{train}:31" not in out and "and 2 more" in out
    assert f"{train}:2 is {test}:1" in out and f"{train}:8 is {test}:3" in out


def test_a_split_by_input_keeps_each_rows_split_while_the_data_is_cleaned(tmp_path):
    """A seeded shuffle of positions moved most of the test split when one row of 1,000 was
    removed, so `bench --compare` of the runs before and after a cleaning pass paired few examples;
    by input, removing rows, adding rows or correcting an answer leaves the others where they were."""
    rows = [chat_row(f"question {i}: what broke on host-{i % 37}?", f"answer {i}") for i in range(1000)]

    def test_split(data: list[dict], **settings) -> set[str]:
        splits = make_splits(cfg(write_jsonl(tmp_path / "d.jsonl", data), **settings))
        return {ex.input_turns()[-1][1] for ex in splits.test}

    def moved(before: set[str], after: set[str]) -> int:
        return len(before - after)

    shuffled, by_input = test_split(rows), test_split(rows, split_by="input")
    assert len(shuffled) == len(by_input) == 100
    cleaned = rows[:500] + rows[501:]  # one row of 1,000 removed
    # measured: 35 of the 100 test rows moved by position, none by input
    assert (
        moved(shuffled, test_split(cleaned)) >= 20
        and moved(by_input, test_split(cleaned, split_by="input")) <= 1
    )
    corrected = [dict(r) for r in rows]
    corrected[7] = chat_row(rows[7]["messages"][0]["content"], "a corrected answer")
    assert test_split(corrected, split_by="input") == by_input
    grown = rows + [chat_row(f"new question {i}", "new answer") for i in range(50)]
    # measured: 85 of 100 moved by position, 1 by input (a new row ranked into the test cut)
    assert (
        moved(shuffled, test_split(grown)) >= 50
        and moved(by_input, test_split(grown, split_by="input")) <= 10
    )
    assert test_split(rows, split_by="input", split_seed=7) != by_input  # the seed still picks them


def test_a_split_by_input_is_named_and_a_bad_value_refused(tmp_path, chat_rows):
    from edgetune.config import load_recipe
    from edgetune.errors import ConfigError

    path = write_jsonl(tmp_path / "d.jsonl", chat_rows)
    assert (
        make_splits(cfg(path, split_by="input")).files["test"] == f"{path} (10% split, seed 1234, by input)"
    )
    assert make_splits(cfg(path)).files["test"] == f"{path} (10% split, seed 1234)"
    with pytest.raises(ConfigError, match="data.split_by"):
        load_recipe("demo", ["data.split_by=hash"])


def test_the_held_out_rows_bench_takes_are_spread_over_the_split_and_kept_while_the_data_changes(tmp_path):
    """bench scores the first bench.max_examples held-out rows, its baselines the first
    bench.baseline_examples of those, parity the first export.parity_examples. In file order, a
    file written topic by topic gave them the first topics only."""
    topics = [f"topic-{t}" for t in range(10)]
    rows = [chat_row(f"{t}: question {i}?", f"{t} answer {i}") for t in topics for i in range(100)]
    test_file = write_jsonl(tmp_path / "test.jsonl", rows)
    train = write_jsonl(tmp_path / "train.jsonl", [chat_row(f"train {i}?", "yes") for i in range(50)])

    def sample(path, limit: int) -> list[str]:
        splits = make_splits(cfg(train, test=str(path), valid_fraction=0.0))
        return [ex.input_turns()[-1][1] for ex in splits.held_out(limit)]

    first = sample(test_file, 30)
    assert len({q.split(":")[0] for q in first}) >= 8  # in file order: 1 topic
    assert sample(test_file, 100)[:30] == first  # the baselines' rows are among bench's, spread too
    kept = [r for r in rows if r["messages"][0]["content"] not in first[:1]] + [chat_row("new?", "new")]
    assert set(first[1:]) <= set(sample(write_jsonl(tmp_path / "cleaned.jsonl", kept), 30))
    corrected = [chat_row(r["messages"][0]["content"], "corrected") for r in rows]
    assert sample(write_jsonl(tmp_path / "corrected.jsonl", corrected), 30) == first
