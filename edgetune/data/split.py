"""Train/valid/test splits: seeded and deterministic, de-duplicated, and checked for leakage."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

from edgetune.config import DataConfig
from edgetune.data.quality import SHOWN, Quality, assess, folded_input
from edgetune.data.rows import Example, load_examples
from edgetune.errors import DataError


@dataclass
class Splits:
    train: list[Example]
    valid: list[Example]
    test: list[Example]
    format: str
    files: dict[str, str]  # split -> file it came from
    skipped_rows: list[str] = field(default_factory=list)
    duplicates_removed: dict[str, int] = field(default_factory=dict)
    overlap: dict[str, int] = field(default_factory=dict)  # exact / same-input / near counts against train
    quality: Quality = field(default_factory=Quality)  # conflicting answers and near duplicates in train
    overlap_pairs: list[str] = field(default_factory=list)  # the first few, "train file:line is file:line"
    unread_fields: dict[str, int] = field(default_factory=dict)  # fields no layout reads: rows filling them

    def counts(self) -> dict[str, int]:
        return {"train": len(self.train), "valid": len(self.valid), "test": len(self.test)}

    def held_out(self, limit: int | None = None) -> list[Example]:
        """The rows bench scores and export checks parity on: the test split, or where there is
        none the validation split (which chose the checkpoint); the first `limit`.

        They come in the order of a hash of each row's input, not in file order: any first rows
        are a sample spread over the whole split (the first lines of a file sorted by topic are its
        first topics), and the same sample whatever rows are added, removed or corrected around them."""
        return sorted(self.test or self.valid, key=_input_rank)[:limit]


def dedupe(examples: list[Example]) -> tuple[list[Example], int]:
    seen: set[str] = set()
    kept = []
    for ex in examples:
        k = ex.match_key()
        if k not in seen:
            seen.add(k)
            kept.append(ex)
    return kept, len(examples) - len(kept)


def _split_counts(
    path: str, n: int, valid_fraction: float, test_fraction: float, duplicates: int = 0
) -> tuple[int, int]:
    # at least one example in each requested held-out split, and never the whole of train
    n_valid = max(1, round(n * valid_fraction)) if valid_fraction > 0 else 0
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    if n - n_valid - n_test < 1:
        copies = f" ({duplicates} exact duplicate rows removed, data.dedupe)" if duplicates else ""
        raise DataError(
            f"{path}: only {n} example{'s' * (n != 1)}{copies}: too few to split into train/valid/test; add "
            "data or give data.valid and data.test files"
        )
    return n_valid, n_test


def _percent(fraction: float) -> str:
    """0.1 as "10%", 0.002 as "0.2%" (not "0%")."""
    return f"{fraction * 100:.3g}%"


def _refuse_test_inside_valid(cfg: DataConfig, held: dict[str, list[Example]]) -> None:
    """Two held-out files with the same rows (a copy saved under two names): the test score would
    be on the examples that chose the checkpoint, as surely as with one file named twice."""
    valid, test = held.get("valid", []), held.get("test", [])
    if not (cfg.valid and cfg.test and valid and test):
        return
    seen = {ex.match_key() for ex in valid}
    if all(ex.match_key() in seen for ex in test):
        raise DataError(
            f"{cfg.test}: every test example is also in {cfg.valid}: the test score would be on the "
            "examples that chose the checkpoint; give a separate test file, or drop data.test"
        )


def _input_rank(ex: Example) -> bytes:
    """A hash of the row's input, case and whitespace folded (a text row's whole text)."""
    return hashlib.sha256(folded_input(ex).encode()).digest()


def _held_out_order(train: list[Example], cfg: DataConfig) -> list[int]:
    """The training rows' positions in the order the held-out splits take them from the front:
    a seeded shuffle, or (data.split_by: input) sorted by a seeded hash of each row's input, case
    and whitespace folded, so that where a row goes depends on that row alone but for the cut."""
    if cfg.split_by == "input":
        seed = f"{cfg.split_seed}\0".encode()
        rank = [hashlib.sha256(seed + folded_input(ex).encode()).digest() for ex in train]
        return sorted(range(len(train)), key=rank.__getitem__)
    order = list(range(len(train)))
    random.Random(cfg.split_seed).shuffle(order)
    return order


def make_splits(cfg: DataConfig, skip_bad_rows: bool | None = None) -> Splits:
    skip = cfg.skip_bad_rows if skip_bad_rows is None else skip_bad_rows
    loaded = load_examples(cfg.train, cfg.format, skip)
    fmt = loaded.format
    skipped = list(loaded.skipped)
    unread = dict(loaded.unread)
    train = loaded.examples
    removed = {}
    if cfg.dedupe:
        train, removed["train"] = dedupe(train)
    if cfg.valid and cfg.test and Path(cfg.valid).resolve() == Path(cfg.test).resolve():
        raise DataError(
            f"{cfg.test}: data.valid and data.test name the same file: the test score would be on the "
            "examples that chose the checkpoint; give a separate test file, or drop data.test"
        )
    files = {"train": str(Path(cfg.train))}
    held: dict[str, list[Example]] = {}
    for name in ("valid", "test"):
        path = getattr(cfg, name)
        if path:
            # a layout of its own is fine (Alpaca train, messages valid): both are conversations
            other = load_examples(path, cfg.format, skip)
            kinds, theirs = {e.format for e in train}, {e.format for e in other.examples}
            if theirs - kinds:
                raise DataError(
                    f"{path}: its rows are {' and '.join(sorted(theirs))} examples, but {cfg.train}'s are "
                    f"{' and '.join(sorted(kinds))}: held-out rows must be the kind the model trains on"
                )
            skipped += other.skipped
            for key, rows_filled in other.unread.items():
                unread[key] = unread.get(key, 0) + rows_filled
            rows = other.examples
            if cfg.dedupe:
                rows, removed[name] = dedupe(rows)
            held[name] = rows
            files[name] = str(Path(path))
    carve = [n for n in ("valid", "test") if n not in held]
    if carve:
        order = _held_out_order(train, cfg)
        n_valid, n_test = _split_counts(
            cfg.train,
            len(train),
            cfg.valid_fraction if "valid" in carve else 0.0,
            cfg.test_fraction if "test" in carve else 0.0,
            removed.get("train", 0),
        )
        taken = {"valid": order[:n_valid], "test": order[n_valid : n_valid + n_test]}
        for name in carve:
            held[name] = [train[i] for i in sorted(taken[name])]
            if held[name]:  # a fraction of 0 holds nothing out: no split to name
                by = ", by input" if cfg.split_by == "input" else ""
                files[name] = (
                    f"{files['train']} ({_percent(getattr(cfg, name + '_fraction'))} split, seed {cfg.split_seed}{by})"
                )
        drop = set(taken["valid"]) | set(taken["test"])
        train = [ex for i, ex in enumerate(train) if i not in drop]

    _refuse_test_inside_valid(cfg, held)
    held_out = [ex for rows in held.values() for ex in rows]
    held_exact = _first_source(held_out, Example.match_key)
    held_inputs = _first_source(held_out, Example.prompt_key)
    held_folded = _first_source(held_out, folded_input)
    exact, same_input, near, pairs = [], [], [], []
    # a held-out input that any learnt reply of a train row answers (a longer chat that opens with it)
    for ex in train:
        asked = ex.reply_inputs()
        if ex.match_key() in held_exact:
            exact.append(ex)
            pairs.append(f"{ex.source} is {held_exact[ex.match_key()]}")
        elif found := next((held_inputs[k] for t in asked if (k := ex.prompt_key(t)) in held_inputs), None):
            same_input.append(ex)
            pairs.append(f"{ex.source} asks what {found} asks")
        elif found := next(
            (held_folded[k] for t in asked if (k := folded_input(ex, t)) in held_folded), None
        ):
            near.append(ex)  # the same input up to case and whitespace: as leaked, missed by exact matching
            pairs.append(f"{ex.source} asks what {found} asks, up to case and whitespace")
    overlap = {"exact": len(exact), "same_input": len(same_input), "near": len(near), "dropped_from_train": 0}
    valid_keys = {ex.match_key() for ex in held.get("valid", [])}
    overlap["test_in_valid"] = sum(ex.match_key() in valid_keys for ex in held.get("test", []))
    if cfg.drop_overlap and (exact or same_input or near):
        leaked = {ex.match_key() for ex in exact + same_input + near}
        kept = [ex for ex in train if ex.match_key() not in leaked]
        overlap["dropped_from_train"] = len(train) - len(kept)  # rows (copies too, with dedupe off)
        train = kept
    if not train:
        held_n = sum(len(rows) for rows in held.values())
        dropped = overlap["dropped_from_train"]
        why = (
            f"{dropped} training rows shared an input with a held-out row and were dropped "
            f"(data.drop_overlap: {overlap['exact']} exact, {overlap['same_input']} same input, "
            f"{overlap['near']} near)"
            if dropped
            else "every row went to the held-out splits"
        )
        fix = (
            "give each input once, or set data.drop_overlap: false to train on them anyway"
            if dropped
            else "add data"
        )
        raise DataError(f"{cfg.train}: no training examples left after holding out {held_n}: {why}; {fix}")
    return Splits(
        train,
        held.get("valid", []),
        held.get("test", []),
        fmt,
        files,
        skipped,
        removed,
        overlap,
        assess(train),
        pairs[:SHOWN],
        dict(sorted(unread.items(), key=lambda item: (-item[1], item[0]))),
    )


def _first_source(rows: list[Example], key) -> dict[str, str]:
    """Each key's first row, as file:line."""
    found: dict[str, str] = {}
    for ex in rows:
        found.setdefault(key(ex), ex.source)
    return found
