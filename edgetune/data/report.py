"""`edgetune data check`: validate a dataset against a recipe and describe what was found."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edgetune.config import load_recipe
from edgetune.errors import InputError, printable


def check_dataset(
    recipe_name: str | None,
    overrides: list[str],
    files: dict[str, Path | None],
    fmt: str | None = None,
    skip_bad_rows: bool | None = None,
    tokens: bool = True,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """`skip_bad_rows`: None reads the recipe's data.skip_bad_rows (what `edgetune run` does).
    `say`: where the progress of a long preparation goes."""
    from edgetune.data.rows import FORMATS

    if fmt and fmt not in ("auto", *FORMATS):  # as the CLI's --format choice refuses it
        raise InputError(f"--format {fmt}: not a row format; the formats are auto, {', '.join(FORMATS)}")
    recipe = load_recipe(recipe_name, overrides)
    cfg = recipe.data
    own_train = bool(cfg.train) and files.get("train") is not None and _same_file(files["train"], cfg.train)
    for name, path in files.items():
        if path:
            setattr(cfg, name, str(path))
        elif not own_train:  # another dataset: the recipe's valid and test files are not its splits
            setattr(cfg, name, None)
    if fmt:
        cfg.format = fmt
    report: dict[str, Any] = {
        "recipe": recipe.name,
        "model": recipe.model.base,
        "max_seq_len": cfg.max_seq_len,
    }
    if not tokens:
        from edgetune.data.split import make_splits

        splits = make_splits(cfg, skip_bad_rows)
        report.update(
            format=splits.format,
            files=splits.files,
            counts=splits.counts(),
            skipped_bad_rows=len(splits.skipped_rows),
            unread_fields=splits.unread_fields,
            duplicates_removed=splits.duplicates_removed,
            overlap=splits.overlap,
            overlap_examples=splits.overlap_pairs,
            quality=asdict(splits.quality),
        )
        report["skipped_examples"] = splits.skipped_rows[:5]
        # the keys a tokenised check has, so a script reads one shape: none of these was looked at
        report.update(template=None, splits=None, warnings=[], sample=None)
        return report
    from edgetune.data.files import check_data_files
    from edgetune.data.prepare import past_the_context, prepare, special_token_text, unused_system_prompt
    from edgetune.models import load_tokenizer, resolve_model

    check_data_files(cfg)

    model = resolve_model(recipe.model.base, recipe.model.revision, allow_pickle=recipe.model.allow_pickle)
    tokenizer = load_tokenizer(model, recipe.model.trust_remote_code)
    prepared = prepare(cfg, tokenizer, skip_bad_rows, say=say)
    report.update(prepared.summary())
    context = past_the_context(prepared, model.path, recipe.model.trust_remote_code)
    from edgetune.bench.metrics import answer_form_warnings

    said = [context, unused_system_prompt(prepared, cfg.system_prompt), special_token_text(prepared)]
    # with no recipe named, the default recipe's metric says nothing of the user's file
    if recipe_name is not None or own_train:
        from edgetune.bench.accuracy import held_out_answers_warning

        said += answer_form_warnings(recipe.bench.metric, prepared.splits, recipe.bench.max_examples)
        said.append(held_out_answers_warning(prepared, recipe.bench))
    report["warnings"] = [w for w in said if w]
    report["skipped_examples"] = prepared.splits.skipped_rows[:5]
    first = _first_encoded(prepared)
    text, _ = prepared.renderer.spans(first)
    trained = prepared.renderer.trained_characters(first)
    report["sample"] = {"source": first.source, "rendered": text, "supervised_spans": trained}
    return report


def _first_encoded(prepared):
    """The first training row that encodes (not one the template refused or one dropped): by trying
    them, as rows can share a source (a JSON array on one line is all `file:1`)."""
    from edgetune.errors import InputError

    for ex in prepared.splits.train:
        try:
            if not prepared.renderer.encode(ex).dropped:
                return ex
        except InputError:
            continue
    return prepared.splits.train[0]  # prepare refuses data with none left: not reached


def _same_file(a: Path | str, b: Path | str) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def print_report(report: dict[str, Any], out=None) -> None:
    """The report on `out` (default: stdout); `edgetune run` prints it with its stages, on stderr,
    so that its stdout holds only what it was asked for (--pick's path)."""
    from rich.markup import escape
    from rich.text import Text

    from edgetune.console import print_rows

    if out is None:
        from edgetune.console import out

    fmt = report["format"] + (
        " (read as conversations)" if report["format"] in ("alpaca", "sharegpt") else ""
    )
    out.print(
        f"[bold]format[/]: {fmt}    [bold]model[/]: {escape(str(report['model']))}    "
        f"[bold]max_seq_len[/]: {report['max_seq_len']}"
    )
    for name, where in report["files"].items():
        out.print(f"  {name:<5} {escape(str(where))}")
    skipped, named = report["skipped_bad_rows"], report["skipped_examples"]
    out.print(f"bad rows skipped: {skipped}")
    _print_named(named, skipped, out)
    unread = report.get("unread_fields", {})  # (a --json report saved before there was this key)
    listed = ", ".join(f"{escape(key)} ({rows:,} row{'s' * (rows != 1)})" for key, rows in unread.items())
    out.print(f"fields not read (nothing is trained on them): {listed or 'none'}")
    dup = report["duplicates_removed"]
    out.print(
        "exact duplicates removed: " + ", ".join(f"{k} {v}" for k, v in dup.items())
        if dup
        else "exact duplicates removed: not checked (data.dedupe is off)"
    )
    ov = report["overlap"]
    out.print(
        f"train/held-out overlap: {ov['exact']} exact, {ov['same_input']} same input, "
        f"{ov.get('near', 0)} same input up to case and whitespace; "
        f"{ov['dropped_from_train']} dropped from train"
        + (f"; {ov['test_in_valid']} test examples also in valid" if ov.get("test_in_valid") else "")
    )
    named = report.get("overlap_examples", [])
    _print_named(named, ov["exact"] + ov["same_input"] + ov.get("near", 0), out)
    _print_quality(report["quality"], out)
    headers = ["split", "rows"]
    rows = []
    if report.get("splits"):
        headers += ["min", "mean", "p50", "p95", "max", "loss tok", "trunc", "drop", "no EOS"]
        for name, count in report["counts"].items():
            s = report["splits"][name]
            ln = s["lengths"]
            stats = [ln["min"], ln["mean"], ln["p50"], ln["p95"], ln["max"], s["supervised_tokens"]]
            stats += [s["truncated"], s["dropped"], s["missing_eos"]]
            rows.append([name, str(count), *map(str, stats)])
    else:
        rows = [[name, str(count)] for name, count in report["counts"].items()]
    print_rows(out, "splits (tokens per example)" if report.get("splits") else "splits", headers, rows)
    if report.get("splits"):
        for name, s in report["splits"].items():
            for reason in s["dropped_examples"]:
                out.print(f"[yellow]dropped[/] ({name}) {escape(reason)}")
            for where in s.get("missing_eos_examples", []):
                out.print(f"[yellow]no EOS[/] ({name}) {escape(where)}: a learnt reply does not end in EOS")
        template = report["template"]
        described = {
            "model": "the model's own",
            "fallback": "edgetune fallback (the model has none)",
            "plain": "none: the rows go to the model as their own text",
        }
        out.print(f"chat template: {described[template]}")
        for warning in report.get("warnings", []):
            out.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
        sample = report["sample"]
        rendered, spans = sample["rendered"], sample["supervised_spans"]
        text = Text()  # piece by piece: a piece's control characters are shown (printable), not sent
        # no colour (a log, NO_COLOR): the learnt pieces are bracketed, or nothing would tell them apart
        plain = out.color_system is None or out.no_color
        cuts = sorted({0, len(rendered), *(at for span in spans for at in span)})
        for start, end in zip(cuts, cuts[1:]):
            piece = printable(rendered[start:end])
            if any(s <= start and end <= e for s, e in spans):
                text.append(f"⟦{piece}⟧" if plain else piece, style="bold green")
            else:
                text.append(piece)
        shown = "between ⟦ and ⟧" if plain else "in green"
        out.print(f"[dim]sample ({escape(sample['source'])}; the tokens that carry loss {shown}):[/]")
        out.print(text, soft_wrap=True)


def _print_named(named: list[str], total: int, out) -> None:
    """The first few rows a count is made of, one "file:line ..." a line, and how many more."""
    from rich.markup import escape

    for line in named:
        out.print(f"  {escape(line)}", soft_wrap=True)
    if total > len(named) and named:
        out.print(f"  and {total - len(named)} more")


def _print_quality(q: dict[str, Any], out) -> None:
    from rich.markup import escape

    from edgetune.data.quality import counted

    if q["conflicting_inputs"]:
        out.print(
            f"[yellow]conflicting answers[/] (train): {counted(q['conflicting_inputs'], 'input')} with more "
            f"than one answer, {q['conflicting_examples']} examples; e.g. "
            + escape("; ".join(q["conflicts"])),
            soft_wrap=True,
        )
    else:
        out.print("conflicting answers (train): none")
    if q["near_duplicates"]:
        out.print(
            f"[yellow]near duplicates[/] (train, case and whitespace only): {q['near_duplicates']} kept; e.g. "
            + escape("; ".join(q["near_duplicate_pairs"])),
            soft_wrap=True,
        )
    else:
        out.print("near duplicates (train, case and whitespace only): none")
