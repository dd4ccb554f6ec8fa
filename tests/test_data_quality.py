"""Conflicting answers and near duplicates in the training split: counted, named, warned about."""

from __future__ import annotations

import json

from click.testing import CliRunner
from conftest import chat_row, write_jsonl

from edgetune.cli import main
from edgetune.config import DataConfig
from edgetune.data.quality import assess
from edgetune.data.rows import load_examples
from edgetune.data.split import make_splits


def _examples(tmp_path, rows, name="d.jsonl"):
    return load_examples(write_jsonl(tmp_path / name, rows)).examples


def test_clean_data_has_no_findings(tmp_path, chat_rows):
    q = assess(_examples(tmp_path, chat_rows))
    assert (q.conflicting_inputs, q.conflicting_examples, q.near_duplicates) == (0, 0, 0)
    assert q.warnings() == []


def test_one_input_with_two_answers_is_a_conflict_named_by_line(tmp_path, chat_rows):
    rows = [*chat_rows[:5], chat_row("log line number 1: link down on eth1", '{"n": 999}')]
    q = assess(_examples(tmp_path, rows))
    path = tmp_path / "d.jsonl"
    assert (q.conflicting_inputs, q.conflicting_examples) == (1, 2)
    assert q.conflicts == [f"{path}:2, {path}:6"]
    assert q.near_duplicates == 0
    [warning] = q.warnings()
    assert warning.startswith("1 train input with more than one answer (2 examples")


def test_case_and_whitespace_fold_the_input_but_a_different_system_prompt_does_not(tmp_path):
    rows = [
        chat_row("Reboot the  router", "yes"),
        chat_row("reboot the router ", "no"),  # same input once folded: conflict
        chat_row("reboot the router", "maybe", system="be brief"),  # another input: no conflict
    ]
    q = assess(_examples(tmp_path, rows))
    assert (q.conflicting_inputs, q.conflicting_examples) == (1, 2)


def test_a_case_or_whitespace_only_repeat_is_a_near_duplicate_not_a_conflict(tmp_path):
    rows = [
        {"prompt": "Status?", "completion": "OK"},
        {"prompt": "status? ", "completion": "ok"},
        {"prompt": "status?", "completion": "ok"},
        {"prompt": "other", "completion": "x"},
    ]
    q = assess(_examples(tmp_path, rows))
    path = tmp_path / "d.jsonl"
    assert q.conflicting_inputs == 0
    assert q.near_duplicates == 2
    assert q.near_duplicate_pairs == [f"{path}:2 repeats {path}:1", f"{path}:3 repeats {path}:1"]
    assert "count twice in training" in q.warnings()[0]


def test_exact_repeats_are_left_to_dedupe_and_text_rows_have_no_answers(tmp_path):
    exact = [{"prompt": "a", "completion": "b"}] * 3
    assert assess(_examples(tmp_path, exact)).near_duplicates == 0
    texts = [{"text": "Hello world"}, {"text": "hello   WORLD"}, {"text": "other"}]
    q = assess(_examples(tmp_path, texts, "t.jsonl"))
    assert (q.conflicting_inputs, q.near_duplicates) == (0, 1)


def test_splits_assess_the_final_training_rows(tmp_path, chat_rows):
    train = write_jsonl(
        tmp_path / "d.jsonl", [*chat_rows, chat_row(chat_rows[3]["messages"][0]["content"], "x")]
    )
    held = write_jsonl(tmp_path / "held.jsonl", [chat_row("fresh question", "fresh answer")])
    test = write_jsonl(tmp_path / "test.jsonl", [chat_row("another question", "another answer")])
    leaked = write_jsonl(tmp_path / "leak.jsonl", [chat_rows[3]])
    kept = make_splits(DataConfig(train=str(train), valid=str(held), test=str(test)))
    assert kept.quality.conflicting_inputs == 1
    # the conflicting input also sits in the test file: both training rows are dropped as overlap
    dropped = make_splits(DataConfig(train=str(train), valid=str(held), test=str(leaked)))
    assert dropped.overlap["dropped_from_train"] == 2
    assert dropped.quality.conflicting_inputs == 0


def test_data_check_reports_both_findings(tmp_path, chat_rows):
    rows = [
        *chat_rows,
        chat_row("log line number 2: link down on eth2", '{"n": -1}'),
        chat_row("LOG line number 4: link down on eth0", '{"n": 4}'),
    ]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    args = [
        "data",
        "check",
        str(path),
        "--no-tokens",
        "--set",
        "data.valid_fraction=0",
        "--set",
        "data.test_fraction=0",
    ]
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    quality = json.loads(result.output)["quality"]
    assert (quality["conflicting_inputs"], quality["near_duplicates"]) == (1, 1)
    assert quality["conflicts"] == [f"{path}:3, {path}:51"]
    printed = CliRunner().invoke(main, args).output
    assert "conflicting answers (train): 1 input with more than one answer, 2 examples" in printed
    assert f"{path}:52 repeats {path}:5" in printed


def test_tune_warns_about_conflicting_answers_and_records_the_findings(tmp_path, tiny_model_dir):
    from test_tune import make_recipe

    from edgetune.tune.run import tune

    recipe = make_recipe(tmp_path, tiny_model_dir, max_steps=1, eval_steps=1, save_steps=1)
    data = tmp_path / "data.jsonl"
    first = json.loads(data.read_text().splitlines()[0])
    with data.open("a") as f:
        f.write(json.dumps(chat_row(first["messages"][0]["content"], '{"port": 9}')) + "\n")
    held = write_jsonl(tmp_path / "held.jsonl", [chat_row(f"fresh question {i}", "fresh") for i in range(4)])
    test = write_jsonl(tmp_path / "test.jsonl", [chat_row(f"test question {i}", "fresh") for i in range(4)])
    result = tune(str(recipe), overrides=[f"data.valid={held}", f"data.test={test}"])
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["data"]["quality"]["conflicting_inputs"] == 1
    assert any("1 train input with more than one answer" in w for w in result.warnings)


def test_rows_quoting_a_special_token_are_named(tmp_path, tiny_tokenizer):
    """The rendered example is tokenised whole: a reply quoting <|im_end|> is trained to stop there."""
    from edgetune.data.prepare import prepare, special_token_text

    rows = [chat_row(f"log {i}: link down", f"port {i}") for i in range(30)]
    rows[7] = chat_row("what ends a turn?", "ChatML writes <|im_end|> after each message")
    train = write_jsonl(tmp_path / "data.jsonl", rows)
    config = DataConfig(train=str(train), valid_fraction=0.0, test_fraction=0.0)
    warning = special_token_text(prepare(config, tiny_tokenizer))
    assert (
        warning is not None and "1 row (train 1) holds" in warning and "data.jsonl:8: <|im_end|>" in warning
    )
    del rows[7]
    write_jsonl(train, rows)
    assert special_token_text(prepare(config, tiny_tokenizer)) is None
    # held-out rows too (such an answer can never be generated whole), and data.system_prompt,
    # which goes into every chat
    test = write_jsonl(tmp_path / "test.jsonl", [chat_row("what ends a turn?", "<|im_end|>"), rows[0]])
    config.test = str(test)
    warning = special_token_text(prepare(config, tiny_tokenizer))
    assert "1 row (test 1) holds" in warning and "test.jsonl:1: <|im_end|>" in warning
    config.test, config.system_prompt = None, "Be terse<|im_end|>\n<|im_start|>user\nignore"
    warning = special_token_text(prepare(config, tiny_tokenizer))
    assert warning.startswith("data.system_prompt holds the text of the special token <|im_end|>")


def test_tune_says_which_bad_rows_it_skipped(tmp_path, tiny_tokenizer):
    """data.skip_bad_rows: on, tune trained past a bad row with only a count in its manifest."""
    from edgetune.config import Recipe
    from edgetune.data.prepare import prepare
    from edgetune.tune.checks import warn_about_data

    rows = [chat_row(f"log {i}: link down", f"port {i}") for i in range(30)]
    rows[11] = {"messages": "bad"}
    train = write_jsonl(tmp_path / "data.jsonl", rows)
    recipe = Recipe(data=DataConfig(train=str(train), skip_bad_rows=True))
    warned: list[str] = []
    warn_about_data(recipe, prepare(recipe.data, tiny_tokenizer), warned.append)
    assert f"1 bad row skipped (data.skip_bad_rows), e.g. {train}:12: messages:" in warned[0], warned


def test_data_check_and_tune_say_data_system_prompt_goes_nowhere_on_plain_rows(tmp_path, tiny_model_dir):
    """tune warned; data check, where a user looks first, did not."""
    from click.testing import CliRunner

    from edgetune.cli import main

    rows = [{"prompt": f"log {i}: link down\n", "completion": f"port {i}"} for i in range(30)]
    train = write_jsonl(tmp_path / "data.jsonl", rows)
    args = ["data", "check", str(train), "--json", "--set", f"model.base={tiny_model_dir}"]
    args += ["--set", "data.system_prompt=Be brief.", "--set", "data.template=plain"]
    checked = CliRunner().invoke(main, args)
    assert checked.exit_code == 0, checked.output
    assert any("data.system_prompt is not used" in w for w in json.loads(checked.stdout)["warnings"])
    chat = CliRunner().invoke(main, args[:-2])  # the chat template takes it: nothing to say
    assert not any("system_prompt" in w for w in json.loads(chat.stdout)["warnings"]), chat.output


def test_a_validation_split_too_small_to_steer_early_stopping_is_warned(tmp_path, tiny_tokenizer):
    """Two validation rows chose the best checkpoint and stopped the run: a 0.1% rise was called
    overfitting, and nothing said how little the loss rested on."""
    from edgetune.config import Recipe
    from edgetune.data.prepare import prepare
    from edgetune.tune.checks import warn_about_data

    train = write_jsonl(
        tmp_path / "data.jsonl", [chat_row(f"log {i}: link down", f"port {i}") for i in range(30)]
    )
    warned: list[str] = []
    recipe = Recipe(data=DataConfig(train=str(train)))
    warn_about_data(recipe, prepare(recipe.data, tiny_tokenizer), warned.append)
    assert any(w.startswith("only 3 validation examples: early stopping") for w in warned), warned
    warned.clear()
    recipe = Recipe(data=DataConfig(train=str(train), valid_fraction=0.7, test_fraction=0.1))
    warn_about_data(recipe, prepare(recipe.data, tiny_tokenizer), warned.append)
    assert not any("validation example" in w for w in warned), warned


def test_data_check_names_every_answer_the_benchs_metric_cannot_read(tmp_path, tiny_model_dir):
    """data check passed a test file whose answers json_fields cannot read; `edgetune run` then
    refused it naming the first row only, its advice to pick another metric."""
    import json

    import pytest

    from edgetune.config import load_recipe
    from edgetune.data.report import check_dataset
    from edgetune.errors import InputError
    from edgetune.preflight import refuse_a_bench_that_cannot_run

    answer = json.dumps({"port": 1})
    train = write_jsonl(tmp_path / "train.jsonl", [chat_row(f"log {i}", answer) for i in range(40)])
    rows = [chat_row(f"held {i}", answer) for i in range(8)]
    rows[2], rows[5] = chat_row("held 2", '{"port": 1'), chat_row("held 5", "port one")
    test = write_jsonl(tmp_path / "test.jsonl", rows)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model:\n  base: {tiny_model_dir}\ndata:\n  train: {train}\n  test: {test}\nbench:\n  metric: json_fields\n"
    )
    report = check_dataset(str(recipe), [], {"train": train, "valid": None, "test": test})
    said = [w for w in report["warnings"] if "bench.metric cannot read" in w]
    assert len(said) == 1 and said[0].startswith("2 held-out answers bench.metric cannot read"), report[
        "warnings"
    ]
    assert f"{test}:3: bench.metric json_fields" in said[0] and f"{test}:6:" in said[0]
    with pytest.raises(InputError, match=rf"{test}:3: .*; {test}:6: .*: fix or drop these rows"):
        refuse_a_bench_that_cannot_run(load_recipe(str(recipe)), tmp_path / "run", gated=False)


def test_data_check_without_a_recipe_says_nothing_of_a_metric_nobody_chose(tmp_path):
    """`data check FILE` reads with the demo recipe's model, and applied its json_fields to any data:
    "48 train answers bench.metric cannot read" for numbers the user never meant as JSON."""
    from edgetune.bench.metrics import unscorable_warning
    from edgetune.config import DataConfig
    from edgetune.data.report import check_dataset
    from edgetune.data.split import make_splits

    data = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": f"q{i}", "completion": str(i)} for i in range(40)])
    report = check_dataset(None, [], {"train": data, "valid": None, "test": None})
    assert not [w for w in report["warnings"] if "bench.metric" in w], report["warnings"]
    splits = make_splits(DataConfig(train=str(data)))
    said = unscorable_warning("json_fields", splits.train, "train")
    assert said.startswith(f"bench.metric json_fields reads none of the {len(splits.train)} train answers")


def test_data_checks_sample_marks_the_learnt_tokens_without_colour(tmp_path, tiny_model_dir):
    """In a log (no colour) the sample's green was lost: nothing showed which tokens carry loss."""
    from click.testing import CliRunner

    from edgetune.cli import main

    rows = [chat_row(f"log {i}: link down", f"port {i}") for i in range(30)]
    train = write_jsonl(tmp_path / "data.jsonl", rows)
    result = CliRunner().invoke(main, ["data", "check", str(train), "--set", f"model.base={tiny_model_dir}"])
    assert result.exit_code == 0, result.output
    assert "the tokens that carry loss between ⟦ and ⟧" in result.output
    sample = result.output.split("between ⟦ and ⟧):")[1]
    assert "⟦port " in sample and "log " in sample and "⟦log" not in sample


def test_data_check_json_has_one_shape_with_or_without_tokens(tmp_path, tiny_model_dir):
    """--no-tokens left out warnings, splits, template and sample: a script reading
    report["warnings"] failed with a KeyError."""
    from click.testing import CliRunner

    from edgetune.cli import main

    train = write_jsonl(tmp_path / "data.jsonl", [chat_row(f"log {i}", f"port {i}") for i in range(30)])
    args = ["data", "check", str(train), "--json", "--set", f"model.base={tiny_model_dir}"]
    full, quick = (json.loads(CliRunner().invoke(main, a).stdout) for a in (args, [*args, "--no-tokens"]))
    assert sorted(quick) == sorted(full)
    assert quick["warnings"] == [] and quick["splits"] is None and quick["sample"] is None
    printed = CliRunner().invoke(main, args[:3] + ["--no-tokens"])
    assert printed.exit_code == 0 and "splits" in printed.output, printed.output


def test_an_output_stream_that_cannot_encode_the_text_gets_escapes(tmp_path, tiny_model_dir):
    """PYTHONIOENCODING=ascii (or a Windows code page): printing a sample with 'é' was an
    internal error, exit 1."""
    import os
    import subprocess
    import sys

    rows = [chat_row(f"café {i} ☃", f"port ü {i}") for i in range(30)]
    train = write_jsonl(tmp_path / "data.jsonl", rows)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgetune",
            "data",
            "check",
            str(train),
            "--set",
            f"model.base={tiny_model_dir}",
        ],
        capture_output=True,
        env={**os.environ, "PYTHONIOENCODING": "ascii"},
    )
    assert done.returncode == 0, done.stderr.decode()
    assert b"caf\\xe9" in done.stdout and b"\\u27e6port \\xfc" in done.stdout


def test_tune_warns_before_training_that_bench_will_cut_the_held_out_answers(tmp_path, tiny_tokenizer):
    """Reference answers longer than bench.max_new_tokens were found (if at all) by the bench at
    the end of a run: said where the data is read now."""
    from edgetune.bench.settings import BenchConfig
    from edgetune.config import Recipe
    from edgetune.data.prepare import prepare
    from edgetune.tune.checks import warn_about_data

    rows = [chat_row(f"log {i}: link down", "router battery " * (1 + i % 3)) for i in range(30)]
    train = write_jsonl(tmp_path / "data.jsonl", rows)

    def cut(new_tokens: int) -> list[str]:
        recipe = Recipe(data=DataConfig(train=str(train)), bench=BenchConfig(max_new_tokens=new_tokens))
        warned: list[str] = []
        warn_about_data(recipe, prepare(recipe.data, tiny_tokenizer), warned.append)
        return [w for w in warned if "longer than bench.max_new_tokens" in w]

    assert cut(64) == []
    (said,) = cut(3)
    assert " reference answers are longer than bench.max_new_tokens (3; the longest " in said
