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
    assert splits.overlap == {"exact": 3, "same_input": 1, "near": 1, "dropped_from_train": 5}
    assert splits.counts() == {"train": 45, "valid": 1, "test": 5}
    kept = make_splits(cfg(train, valid=str(valid), test=str(test), drop_overlap=False))
    assert kept.counts()["train"] == 50 and kept.overlap["exact"] == 3


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


def test_length_stats_nearest_rank():
    s = LengthStats.of(list(range(1, 101)))
    assert (s.min, s.p50, s.p95, s.max, s.mean) == (1, 51, 95, 100, 50.5)
    assert LengthStats.of([]).count == 0
