import csv
import json
import re

import pytest
from click.testing import CliRunner
from conftest import chat_row, write_jsonl

from edgetune.cli import main
from edgetune.data.fields import learnt_reply
from edgetune.data.rows import load_examples
from edgetune.errors import DataError


def test_detects_each_row_format(tmp_path):
    cases = {
        "messages": chat_row("hi", "hello"),
        "prompt_completion": {"prompt": "2+2=", "completion": "4"},
        "text": {"text": "plain text"},
    }
    for fmt, row in cases.items():
        result = load_examples(write_jsonl(tmp_path / f"{fmt}.jsonl", [row, row]))
        assert result.format == fmt
        assert len(result.examples) == 2
        assert result.examples[1].source.endswith(f"{fmt}.jsonl:2")


@pytest.mark.parametrize(
    "bad, field",
    [
        ('{"messages": [{"role": "user", "content": "hi"}, ', "invalid JSON"),
        (
            {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]},
            "messages[0].content: expected a string",
        ),
        (
            {"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "x"}]},
            "messages[0].content: is empty",
        ),
        (  # not "expected a string, got null": the key is not there
            {"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]},
            "messages[0].content: missing",
        ),
        (
            {"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]},
            'messages[0].role: unknown role "robot"',
        ),
        ({"messages": [{"role": "user", "content": "hi"}]}, "messages: has no assistant turn"),
        (
            {"messages": "nope"},
            "messages: expected a list, or that list as JSON text; got a string that is invalid JSON",
        ),
        ({"prompt": "only a prompt"}, "messages: missing"),
        ([1, 2], "expected a JSON object"),
        # what an export writes beside or instead of a turn's text is said, not dropped
        (
            {
                "messages": [
                    {"role": "user", "name": "Alice", "content": "hi"},
                    {"role": "assistant", "content": "x"},
                ]
            },
            "messages[0].name: a speaker's name, which edgetune does not render",
        ),
        (  # OpenAI's few-shot form
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "system", "name": "example_user", "content": "hi"},
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "x"},
                ]
            },
            "messages[1].name: 'example_user': a few-shot example written as a named system turn",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                    {"role": "assistant", "content": "x"},
                ]
            },
            "messages[0].content: a list of text parts: edgetune reads content as one string; join",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}]},
                    {"role": "assistant", "content": "x"},
                ]
            },
            "messages[0].content: a list of content parts holding image_url: edgetune trains on text alone",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": None, "refusal": "No."},
                ]
            },
            "messages[1].content: null, with the reply in refusal",
        ),
        (
            {"messages": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "x"}]},
            "messages[0]: a ShareGPT turn ({from, value}): name the list conversations",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "system", "content": "s"},
                    {"role": "assistant", "content": "x"},
                ]
            },
            "messages[1]: a system message is only allowed first",
        ),
        (
            {
                "messages": [
                    {"role": "developer", "content": "s"},
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "x"},
                ]
            },
            'messages[0].role: unknown role "developer"; expected one of system, user, assistant (OpenAI\'s',
        ),
        (
            {"messages": [{"role": "User", "content": "hi"}, {"role": "assistant", "content": "x"}]},
            'unknown role "User"; expected one of system, user, assistant (in lower case)',
        ),
        (
            {
                "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}],
                "system": 3,
            },
            "system: expected a string, got a number",
        ),
    ],
)
def test_bad_row_names_file_line_and_field(tmp_path, bad, field):
    rows = [chat_row(f"q{i}", f"a{i}") for i in range(6)] + [bad] + [chat_row("q", "a")]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError) as info:
        load_examples(path)
    assert f"{path}:7: " in str(info.value)
    assert field in str(info.value)


def test_skip_bad_rows_counts_them(tmp_path):
    rows = [chat_row("a", "b"), "{oops", {"messages": []}, chat_row("c", "d")]
    result = load_examples(write_jsonl(tmp_path / "d.jsonl", rows), skip_bad_rows=True)
    assert len(result.examples) == 2
    assert len(result.skipped) == 2
    assert result.skipped[0].endswith(
        "d.jsonl:2: invalid JSON (Expecting property name enclosed in double quotes at column 2)"
    )


def test_forced_format_mismatch_is_reported(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a"}])
    with pytest.raises(DataError, match="d.jsonl:1: prompt: missing"):
        load_examples(path, "prompt_completion")


def test_csv_and_parquet_read_like_jsonl(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [chat_row(f"user {i}, with a comma", f'{{"a": {i}}}', system="sys") for i in range(5)]
    expected = load_examples(write_jsonl(tmp_path / "d.jsonl", rows)).examples
    with open(tmp_path / "d.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["messages"])
        for r in rows:
            w.writerow([json.dumps(r["messages"])])
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    for name in ("d.csv", "d.parquet"):
        got = load_examples(tmp_path / name).examples
        assert got == expected, name

    pc = tmp_path / "pc.csv"
    pc.write_text('prompt,completion\n"Translate: hi","bonjour"\n,"empty prompt"\n')
    with pytest.raises(DataError, match=r"pc.csv:3: prompt: is empty"):
        load_examples(pc)


def test_unknown_extension_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="d.txt: file not found"):  # what is wrong first
        load_examples(tmp_path / "d.txt")
    (tmp_path / "d.txt").write_text("hello\n")
    with pytest.raises(DataError, match="unknown dataset file type '.txt'"):
        load_examples(tmp_path / "d.txt")
    with pytest.raises(DataError, match="file not found"):
        load_examples(tmp_path / "missing.jsonl")
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError, match="data: a directory; name the dataset file in it"):
        load_examples(tmp_path / "data")


def test_a_directory_or_pipe_is_not_a_dataset(tmp_path):
    import os

    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(DataError, match=r"dir.jsonl: not a regular file"):
        load_examples(tmp_path / "dir.jsonl")
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.jsonl")
        with pytest.raises(DataError, match=r"pipe.jsonl: not a regular file"):
            load_examples(tmp_path / "pipe.jsonl")


def test_cli_names_line_7_and_exits_2(tmp_path):
    rows = [chat_row(f"q{i}", f"a{i}") for i in range(6)] + ['{"messages": [}'] + [chat_row("q", "a")]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    result = CliRunner().invoke(main, ["data", "check", str(path), "--no-tokens"])
    assert result.exit_code == 2
    assert f"{path}:7: invalid JSON" in result.output
    assert "Traceback" not in result.output


def test_cli_skip_bad_rows_reports_count(tmp_path):
    rows = [chat_row(f"q{i}", f"a{i}") for i in range(20)] + ["not json"]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    result = CliRunner().invoke(
        main, ["data", "check", str(path), "--no-tokens", "--skip-bad-rows", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["skipped_bad_rows"] == 1
    assert report["counts"] == {"train": 16, "valid": 2, "test": 2}
    # the recipe's data.skip_bad_rows, without the flag (what `edgetune run` checks data with)
    args = ["data", "check", str(path), "--no-tokens", "--json", "--set", "data.skip_bad_rows=true"]
    by_recipe = CliRunner().invoke(main, args)
    assert by_recipe.exit_code == 0 and json.loads(by_recipe.output)["skipped_bad_rows"] == 1, (
        by_recipe.output
    )
    from edgetune.data.report import check_dataset

    assert (
        check_dataset(None, ["data.skip_bad_rows=true"], {"train": path}, tokens=False)["skipped_bad_rows"]
        == 1
    )


def test_check_dataset_refuses_an_unknown_format_naming_the_known_ones(tmp_path):
    """check_dataset(fmt="bogus") was not checked: it failed at the first row ("text: missing; the
    row looks like 'messages', but it is read as 'bogus'"), blaming the data, not the argument."""
    from edgetune.data.report import check_dataset
    from edgetune.errors import InputError

    path = write_jsonl(tmp_path / "d.jsonl", [chat_row(f"q{i}", f"a{i}") for i in range(20)])
    known = "auto, messages, prompt_completion, text, alpaca, sharegpt"
    with pytest.raises(InputError, match=rf"^--format bogus: not a row format; the formats are {known}$"):
        check_dataset(None, [], {"train": path}, fmt="bogus", tokens=False)
    assert check_dataset(None, [], {"train": path}, fmt="messages", tokens=False)["format"] == "messages"


# --------------------------------------------------------------- layouts from other tools

ALPACA = [
    {"instruction": "Classify the log line.", "input": "eth0 link down", "output": '{"c": "network"}'},
    {"instruction": "Say hello.", "input": "", "output": "Hello!", "system": "Be brief."},
    {
        "instruction": "And now?",
        "output": "Still fine.",
        "history": [["How is the fleet?", "Fine."]],
    },
]
ALPACA_AS_MESSAGES = [
    chat_row("Classify the log line.\n\neth0 link down", '{"c": "network"}'),
    chat_row("Say hello.", "Hello!", system="Be brief."),
    {
        "messages": [
            {"role": "user", "content": "How is the fleet?"},
            {"role": "assistant", "content": "Fine."},
            {"role": "user", "content": "And now?"},
            {"role": "assistant", "content": "Still fine."},
        ]
    },
]
SHAREGPT = [
    {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
    {
        "system": "sys",
        "conversations": [{"from": "Human", "value": "q"}, {"from": "gpt", "value": "a"}],
    },
    {"conversations": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "v"}]},
]
SHAREGPT_AS_MESSAGES = [chat_row("hi", "hello"), chat_row("q", "a", system="sys"), chat_row("u", "v")]
TRL_CONVERSATIONAL = [
    {"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "hello"}]}
]


@pytest.mark.parametrize(
    "fmt, rows, same_as",
    [
        ("alpaca", ALPACA, ALPACA_AS_MESSAGES),
        ("sharegpt", SHAREGPT, SHAREGPT_AS_MESSAGES),
        ("prompt_completion", TRL_CONVERSATIONAL, [chat_row("hi", "hello")]),
    ],
)
def test_other_tools_layouts_read_as_the_same_conversations(tmp_path, fmt, rows, same_as):
    got = load_examples(write_jsonl(tmp_path / "d.jsonl", rows))
    expected = load_examples(write_jsonl(tmp_path / "m.jsonl", same_as)).examples
    assert got.format == fmt
    assert got.examples == expected
    assert [ex.source for ex in got.examples] == [
        f"{tmp_path / 'd.jsonl'}:{i}" for i in range(1, len(rows) + 1)
    ]


def test_an_empty_system_turn_is_no_system_prompt_as_an_empty_system_field_is(tmp_path):
    """Exports write `{"role": "system", "content": ""}` (or ShareGPT's "value": ""): the row was
    refused as `content: is empty`, where an empty top-level `system` was already read as none."""
    rows = [
        {"messages": [{"role": "system", "content": ""}, *chat_row("q", "a")["messages"]]},
        {
            "conversations": [
                {"from": "system", "value": " "},
                {"from": "human", "value": "q"},
                {"from": "gpt", "value": "old", "weight": 0},
                {"from": "human", "value": "again"},
                {"from": "gpt", "value": "a"},
            ]
        },
    ]
    first = load_examples(write_jsonl(tmp_path / "m.jsonl", rows[:1])).examples[0]
    assert first == load_examples(write_jsonl(tmp_path / "plain.jsonl", [chat_row("q", "a")])).examples[0]
    (second,) = load_examples(write_jsonl(tmp_path / "s.jsonl", rows[1:])).examples
    assert second.messages[0] == ("user", "q") and second.untrained == (1,)  # the weight-0 reply, renumbered


def test_a_reply_inside_a_trl_prompt_is_context_and_only_the_completion_is_learnt(tmp_path):
    """TRL trains a conversational prompt-completion row on its completion alone: an assistant turn
    in the prompt (an earlier answer, a few-shot example) is part of the question."""
    row = {
        "prompt": [
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "And 3+3?"},
        ],
        "completion": [{"role": "assistant", "content": "6"}],
    }
    (ex,) = load_examples(write_jsonl(tmp_path / "d.jsonl", [row])).examples
    assert [i for i in range(len(ex.messages)) if learnt_reply(ex.messages, i, ex.untrained)] == [3]


def test_alpaca_from_csv_and_sharegpt_from_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "a.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["instruction", "input", "output"])
        w.writerow(["Say hello.", "", "Hello!"])  # an empty CSV cell: no input
        w.writerow(["Classify the log line.", "eth0 link down", '{"c": "network"}'])
    got = load_examples(path)
    assert got.format == "alpaca"
    assert [ex.messages[0][1] for ex in got.examples] == [
        "Say hello.",
        "Classify the log line.\n\neth0 link down",
    ]

    table = pa.Table.from_pylist(
        [
            {"system": None, "conversations": json.dumps(SHAREGPT[0]["conversations"])},
            {"system": "sys", "conversations": json.dumps(SHAREGPT[1]["conversations"])},
        ]
    )
    pq.write_table(table, tmp_path / "s.parquet")
    assert (
        load_examples(tmp_path / "s.parquet").examples
        == load_examples(write_jsonl(tmp_path / "m.jsonl", SHAREGPT_AS_MESSAGES[:2])).examples
    )
    # TRL's conversational prompt-completion from CSV: its lists as JSON text, read as turns (they
    # were trained as raw JSON); a plain prompt that merely starts with "[" stays text
    trl = tmp_path / "trl.csv"
    with open(trl, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "completion"])
        w.writerow(
            [json.dumps(TRL_CONVERSATIONAL[0]["prompt"]), json.dumps(TRL_CONVERSATIONAL[0]["completion"])]
        )
        w.writerow(["[1, 2] + [3]?", "[1, 2, 3]"])
    conversational, plain = load_examples(trl).examples
    assert (
        conversational
        == load_examples(write_jsonl(tmp_path / "c.jsonl", [chat_row("hi", "hello")])).examples[0]
    )
    assert (plain.format, plain.prompt) == ("prompt_completion", "[1, 2] + [3]?")


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"instruction": "", "input": " ", "output": "x"}, "instruction: is empty, and so is input"),
        ({"input": "", "output": "x"}, "instruction: is missing, and so is input"),
        ({"instruction": "q", "output": ""}, "output: is empty"),
        ({"instruction": "q", "output": 3}, "output: expected a string, got a number"),
        ({"instruction": "q", "output": "a", "history": [["only one"]]}, "history[0]: expected an"),
        ({"instruction": "q", "output": "a", "history": [["", "a"]]}, "history[0][0]: is empty"),
        ({"instruction": "q", "output": "a", "history": 0}, "history: expected a list"),
        ({"instruction": 5, "output": "a"}, "instruction: expected a string, got a number"),
        ({"conversations": []}, "conversations: expected a non-empty list"),
        ({"conversations": "[oops"}, "conversations: expected a list, or that list as JSON text"),
        (
            {"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "f()"}]},
            'conversations[1].from: unknown speaker "function_call"',
        ),
        ({"conversations": [{"from": "human", "value": "q"}]}, "conversations: has no assistant turn"),
        (
            {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": None}]},
            "conversations[1].value: expected a string, got null",
        ),
        (
            {
                "system": "a",
                "conversations": [{"from": "system", "value": "b"}, {"from": "gpt", "value": "c"}],
            },
            "system: given twice",
        ),
        (
            {"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "bot", "content": "a"}]},
            'completion[0].role: unknown role "bot"',
        ),
        (
            {"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "tool", "content": "a"}]},
            'completion[0].role: unknown role "tool"; expected one of system, user, assistant (tool and',
        ),
        (  # OpenAI's tool-call turn has null content: said as a tool call, not as a missing string
            {
                "prompt": [{"role": "user", "content": "q"}],
                "completion": [{"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]}],
            },
            "completion[0]: a tool call (tool and function turns are not supported)",
        ),
        # the ShareGPT reader dropped a turn's tool call and trained "Let me check." as the reply
        (
            {
                "conversations": [
                    {"from": "human", "value": "weather in Oslo?"},
                    {"from": "gpt", "value": "Let me check.", "tool_calls": [{"name": "weather"}]},
                ]
            },
            "conversations[1]: a tool call (tool and function turns are not supported)",
        ),
        (
            {
                "conversations": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a", "function_call": {"name": "f"}},
                ]
            },
            "conversations[1]: a tool call",
        ),
        # a reasoning trace or a row's tool list vanished from training without a word
        (
            {
                "prompt": [{"role": "user", "content": "1+1?"}],
                "completion": [{"role": "assistant", "content": "2", "reasoning_content": "one and one"}],
            },
            "completion[0].reasoning_content: a reasoning trace, which edgetune does not render",
        ),
        (
            {
                "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
                "tools": "[{}]",
            },
            "tools: tool definitions, which edgetune does not render",
        ),
        (  # no reply follows a prompt: it was "shared an input with a held-out row", or dropped later
            {"conversations": [{"from": "gpt", "value": "Hello!"}, {"from": "human", "value": "hi"}]},
            "conversations: no assistant turn follows a user turn: there is nothing to learn from",
        ),
    ],
)
def test_bad_rows_of_other_layouts_name_their_field(tmp_path, bad, field):
    first = {"alpaca": ALPACA[0], "sharegpt": SHAREGPT[0]}
    fmt = "sharegpt" if "conversations" in bad else "alpaca" if "output" in bad else "prompt_completion"
    lead = first.get(fmt, TRL_CONVERSATIONAL[0])
    path = write_jsonl(tmp_path / "d.jsonl", [lead, bad])
    with pytest.raises(DataError) as info:
        load_examples(path)
    assert f"{path}:2: {field}" in str(info.value)


def test_a_tool_calling_layout_is_said_to_be_one(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"query": "weather?", "tools": "[]", "answers": "[]"}])
    with pytest.raises(DataError, match="fields \\(answers, query, tools\\).*; tool-calling layouts are not"):
        load_examples(path)


def test_a_top_level_system_prompt_is_read_for_conversations_and_refused_beside_a_plain_prompt(tmp_path):
    """Honoured for Alpaca and ShareGPT rows, a row's `system` was dropped from messages and
    prompt/completion rows: the model trained without the persona the user gave."""
    turns = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "Arr", "weight": 1}]
    messages = [{"system": "You are a pirate.", "messages": turns}, {"system": "", "messages": turns}]
    trl = [{"system": "You are a pirate.", "prompt": turns[:1], "completion": turns[1:]}]
    examples = [
        *load_examples(write_jsonl(tmp_path / "m.jsonl", messages)).examples,
        *load_examples(write_jsonl(tmp_path / "t.jsonl", trl)).examples,
    ]
    pirate = (("system", "You are a pirate."), ("user", "hello"), ("assistant", "Arr"))
    assert [ex.messages for ex in examples] == [pirate, pirate[1:], pirate]
    assert [learnt_reply(ex.messages, len(ex.messages) - 1, ex.untrained) for ex in examples] == [True] * 3
    twice = {"system": "Be a pirate.", "messages": [{"role": "system", "content": "Be a poet."}, *turns]}
    with pytest.raises(
        DataError, match=r"d.jsonl:1: system: given twice: here and as the first turn of messages"
    ):
        load_examples(write_jsonl(tmp_path / "d.jsonl", [twice]))
    plain = {"system": "Be a pirate.", "prompt": "hello", "completion": "Arr"}
    with pytest.raises(DataError, match=r"d.jsonl:1: system: a system prompt beside a plain prompt and comp"):
        load_examples(write_jsonl(tmp_path / "d.jsonl", [plain]))


def test_unpaired_preference_data_is_refused_not_trained_on_as_good_answers(tmp_path):
    """TRL's KTO rows label each reply good or bad: read as prompt/completion, every reply was
    learnt, those labelled bad too."""
    plain = [{"prompt": "Is the sky green?", "completion": "Yes.", "label": False}]
    turns = [
        {
            "prompt": [{"role": "user", "content": "Is the sky green?"}],
            "completion": [{"role": "assistant", "content": "Yes."}],
            "label": True,
        }
    ]
    for rows in (plain, turns):
        with pytest.raises(DataError, match=r"d.jsonl:1: label: unpaired preference data") as info:
            load_examples(write_jsonl(tmp_path / "d.jsonl", rows))
        assert "skip_bad_rows" not in str(info.value)  # every row is labelled: skipping skips them all
    # a label of another kind, or beside a text or a conversation, is a field edgetune does not read
    classified = [{"prompt": "great film", "completion": "positive", "label": "positive"}]
    assert load_examples(write_jsonl(tmp_path / "d.jsonl", classified)).examples[0].completion == "positive"
    for row in ({"text": "great film", "label": True}, chat_row("great film?", "yes") | {"label": False}):
        loaded = load_examples(write_jsonl(tmp_path / "d.jsonl", [row]))
        assert len(loaded.examples) == 1 and loaded.unread == {"label": 1}


def test_a_role_parquet_stores_as_bytes_is_a_bad_row_not_a_crash(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    turn = pa.struct([("role", pa.binary()), ("content", pa.string())])
    messages = [[{"role": b"user", "content": "hi"}, {"role": b"assistant", "content": "yo"}]]
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"messages": pa.array(messages, type=pa.list_(turn))}), path)
    with pytest.raises(
        DataError, match=r"d.parquet:1: messages\[0\].role: unknown role b'user'; expected one of"
    ):
        load_examples(path)


def test_preference_data_is_refused_with_a_reason(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "q", "chosen": "good", "rejected": "bad"}])
    with pytest.raises(DataError, match=r"d.jsonl:1: this is preference data \(chosen/rejected") as info:
        load_examples(path)
    # skipping bad rows would skip every row of such a file: it is not offered
    assert "skip_bad_rows" not in str(info.value)
    with pytest.raises(DataError, match=r"d.jsonl:1: messages: missing; this is preference data") as info:
        load_examples(path, "messages")
    assert "skip_bad_rows" not in str(info.value)


def test_data_check_of_an_alpaca_file_equals_its_messages_twin(tmp_path, tiny_model_dir):
    rows = [
        {
            "instruction": f"Classify log line {i}.",
            "input": f"eth{i % 4} link down",
            "output": f'{{"n": {i}}}',
        }
        for i in range(30)
    ]
    twin = [chat_row(f"Classify log line {i}.\n\neth{i % 4} link down", f'{{"n": {i}}}') for i in range(30)]
    reports = {}
    for name, content in (("alpaca", rows), ("messages", twin)):
        path = write_jsonl(tmp_path / f"{name}.jsonl", content)
        result = CliRunner().invoke(
            main, ["data", "check", str(path), "--json", "--set", f"model.base={tiny_model_dir}"]
        )
        assert result.exit_code == 0, result.output
        reports[name] = json.loads(result.output)
    assert reports["alpaca"].pop("format") == "alpaca"
    assert reports["messages"].pop("format") == "messages"
    for report in reports.values():
        report.pop("files")
        report.pop("sample", None)
        for row in report.get("skipped_examples", []):
            row.pop("source", None)
    assert reports["alpaca"]["splits"]["train"]["supervised_tokens"] > 0
    assert reports["alpaca"] == reports["messages"]


def test_a_forced_format_names_the_layout_the_row_is_in(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ALPACA)
    with pytest.raises(
        DataError,
        match=r"d.jsonl:1: messages: missing; the row looks like 'alpaca', but it is read as 'messages'",
    ):
        load_examples(path, "messages")
    with pytest.raises(DataError) as info:
        load_examples(path, "messages")
    assert "skip_bad_rows" not in str(info.value)
    # a stray row in a file whose format was detected is one bad row: the hint, and skipping is offered
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [chat_row("q", "a"), ALPACA[0]])
    with pytest.raises(DataError) as info:
        load_examples(mixed)
    message = str(info.value)
    assert "mixed.jsonl:2: messages: missing; the row looks like 'alpaca'" in message
    assert "detected from the file's first row" in message and "skip_bad_rows" in message
    assert len(load_examples(mixed, skip_bad_rows=True).examples) == 1
    train = write_jsonl(tmp_path / "train.jsonl", [chat_row(f"q{i}", f"a{i}") for i in range(10)])
    args = ["data", "check", str(train), "--valid", str(path), "--no-tokens"]
    assert CliRunner().invoke(main, args).exit_code == 0  # Alpaca held-out rows are conversations too
    result = CliRunner().invoke(main, [*args, "--format", "messages"])
    assert result.exit_code == 2
    assert "d.jsonl:1: messages: missing; the row looks like 'alpaca'" in result.output


def test_data_check_shows_the_characters_training_learns_and_says_when_no_template_is_used(
    tmp_path, tiny_model_dir
):
    """The sample's green text is what the labels really cover (the answer's first token
    included), and rows trained as plain text are not said to use the model's chat template."""
    rows = [{"prompt": f"Q{i}: the router?\nAnswer: ", "completion": f"the link {i}"} for i in range(12)]
    path = write_jsonl(tmp_path / "plain.jsonl", rows)
    args = [
        "data",
        "check",
        str(path),
        "--set",
        f"model.base={tiny_model_dir}",
        "--set",
        "data.template=plain",
    ]
    report = json.loads(CliRunner().invoke(main, [*args, "--json"]).output)
    text = report["sample"]["rendered"]
    trained = "".join(text[a:e] for a, e in report["sample"]["supervised_spans"])
    assert trained.startswith("the link") and report["template"] == "plain"
    result = CliRunner().invoke(main, args)
    assert (
        result.exit_code == 0
        and "chat template: none: the rows go to the model as their own text" in result.output
    )


def test_a_file_whose_every_row_is_skipped_says_why(tmp_path):
    """Preference data under --skip-bad-rows: every row is skipped, and the error gives the first
    row's reason instead of a bare count."""
    rows = [{"prompt": f"q{i}", "chosen": "good", "rejected": "bad"} for i in range(5)]
    path = write_jsonl(tmp_path / "pref.jsonl", rows)
    with pytest.raises(
        DataError,
        match=r"no usable examples \(5 bad rows skipped; the first, .*pref.jsonl:1: this is preference data",
    ):
        load_examples(path, skip_bad_rows=True)


def test_assistant_turns_of_weight_zero_are_context_without_loss(tmp_path, tiny_tokenizer):
    """OpenAI's fine-tuning files and ShareGPT exports mark replies not to learn with weight 0: they
    stay in the conversation, unsupervised; weight 1 or none is learnt. A row without weights keeps
    its identity (bench names examples by it)."""
    from edgetune.data.render import IGNORE, Renderer

    def turn(role, content, **extra):
        return {"role": role, "content": content, **extra}

    rows = [
        {
            "messages": [
                turn("user", "one"),
                turn("assistant", "a bad old answer", weight=0),
                turn("user", "two"),
                turn("assistant", "the good answer", weight=1),
            ]
        }
    ]
    share = [
        {
            "system": "Be brief.",
            "conversations": [
                {"from": "human", "value": "one"},
                {"from": "gpt", "value": "a bad old answer", "weight": 0},
                {"from": "human", "value": "two"},
                {"from": "gpt", "value": "the good answer"},
            ],
        }
    ]
    for name, content in (("openai", rows), ("sharegpt", share)):
        (ex,) = load_examples(write_jsonl(tmp_path / f"{name}.jsonl", content)).examples
        enc = Renderer(tiny_tokenizer).encode(ex)
        trained = tiny_tokenizer.decode([t for t, label in zip(enc.input_ids, enc.labels) if label != IGNORE])
        assert trained == "the good answer<|im_end|>\n", name
        assert "a bad old answer" in tiny_tokenizer.decode(enc.input_ids)
    # what bench asks for is the last reply that is learnt, not a weight-0 one after it
    last_unlearnt = {
        "messages": rows[0]["messages"][:2] + [turn("user", "two"), turn("assistant", "BAD", weight=0)]
    }
    last_unlearnt["messages"][1] = turn("assistant", "GOOD")
    (ex,) = load_examples(write_jsonl(tmp_path / "last.jsonl", [last_unlearnt])).examples
    renderer = Renderer(tiny_tokenizer)
    assert ex.reference() == "GOOD" and "GOOD" not in renderer.prompt_text(ex)
    # Parquet gives every turn every column: a null weight is no weight
    nulls = [
        {
            "conversations": [
                {"from": "human", "value": "q", "weight": None},
                {"from": "gpt", "value": "a", "weight": None},
            ]
        }
    ]
    assert load_examples(write_jsonl(tmp_path / "nulls.jsonl", nulls)).examples[0].untrained == ()
    # exports that weight every turn (SlimOrca's: system null, human 0, gpt 1) read as no weights;
    # from Parquet, a file mixing from/value and role/content turns has both columns, one null
    weighted = {
        "conversations": [
            {"from": "system", "value": "s", "weight": None, "role": None, "content": None},
            {"from": "human", "value": "q", "weight": 0.0, "role": None, "content": None},
            {"from": None, "value": None, "weight": 1.0, "role": "assistant", "content": "a"},
        ]
    }
    (ex,) = load_examples(write_jsonl(tmp_path / "weighted.jsonl", [weighted])).examples
    assert ex.messages == (("system", "s"), ("user", "q"), ("assistant", "a")) and ex.untrained == ()
    plain = load_examples(write_jsonl(tmp_path / "plain.jsonl", [chat_row("q", "a")])).examples[0]
    assert plain.key() == json.dumps(["messages", [["user", "q"], ["assistant", "a"]], "", "", ""])

    bad = {
        "messages[1].weight: expected 0 or 1, got 0.5": [
            turn("user", "q"),
            turn("assistant", "a", weight=0.5),
        ],
        "messages[0].weight: 1 on a user turn: only an assistant turn is learnt": [
            turn("user", "q", weight=1),
            turn("assistant", "a"),
        ],
        "messages: every assistant turn has weight 0": [turn("user", "q"), turn("assistant", "a", weight=0)],
    }
    for message, messages in bad.items():
        path = write_jsonl(tmp_path / "bad.jsonl", [{"messages": messages}])
        with pytest.raises(DataError, match=rf"bad.jsonl:1: {re.escape(message)}"):
            load_examples(path)


def test_data_check_names_the_fields_no_layout_reads(tmp_path):
    """A `text,label` file trained on its text alone, the label dropped without a word."""
    path = tmp_path / "d.csv"
    rows = [
        f"film {i} was fine,{'positive' if i % 2 else 'negative'},{i if i < 20 else ''}" for i in range(30)
    ]
    path.write_text("text,label,id\n" + "\n".join(rows) + "\n")
    result = CliRunner().invoke(main, ["data", "check", str(path), "--no-tokens", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["unread_fields"] == {"label": 30, "id": 20}  # empty cells fill nothing
    result = CliRunner().invoke(main, ["data", "check", str(path), "--no-tokens"])
    assert "fields not read (nothing is trained on them): label (30 rows), id (20 rows)\n" in result.output
    read = write_jsonl(tmp_path / "d.jsonl", [chat_row(f"q{i}", "a") | {"system": None} for i in range(30)])
    result = CliRunner().invoke(main, ["data", "check", str(read), "--no-tokens"])
    assert "fields not read (nothing is trained on them): none\n" in result.output, result.output
