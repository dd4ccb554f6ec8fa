"""bench/report.json (its fields: report_shape.py), report.md (one table) and report.png."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from edgetune.bench.gates import megabytes
from edgetune.rundir import atomic_write_files, json_text

COLUMNS = ("target", "device", "size", "metric", "retention", "KL", "top-1", "TTFT", "decode", "RSS", "gate")


def _fmt(value, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def columns(report: dict[str, Any]) -> list[str]:
    """The table's columns; the retention interval where one was measured, GPU memory only where a
    target ran on CUDA, onnxruntime-genai's timings where an ONNX folder was timed in it."""
    cols = list(COLUMNS)
    if any(t.get("retention_interval") for t in report["targets"]):
        cols.insert(cols.index("retention") + 1, "interval")
    if any(t["device"] == "cuda" for t in report["targets"]):
        cols.insert(cols.index("RSS") + 1, "VRAM")
    if any(t.get("genai") for t in report["targets"]):  # ONNX folders timed in onnxruntime-genai too
        cols[cols.index("decode") + 1 : cols.index("decode") + 1] = ["genai TTFT", "genai decode"]
    return cols


def _interval(t: dict[str, Any]) -> str:
    interval = t.get("retention_interval")
    return "-" if not interval else f"{interval[0]:.1%}-{interval[1]:.1%}"


def row_cells(t: dict[str, Any], cols: list[str]) -> list[str]:
    gate = t.get("gate", "-")
    if gate == "fail":
        gate = "FAIL: " + ", ".join(t.get("gate_failures", []))
    cells = {
        "target": t["name"],
        "device": t["device"],
        "size": megabytes(t["size_bytes"]),
        "metric": _fmt(t["task_metric"]["value"], ".3f"),
        "retention": _fmt(t.get("retention"), ".1%"),
        "interval": _interval(t),
        "KL": _fmt(t.get("kld_mean"), ".2e"),
        "top-1": _fmt(t.get("top1_agreement"), ".1%"),
        "TTFT": _fmt(t.get("ttft_ms"), ".0f", " ms"),
        "decode": _fmt(t.get("decode_tok_s"), ".1f", " tok/s"),
        "genai TTFT": _fmt((t.get("genai") or {}).get("ttft_ms"), ".0f", " ms"),
        "genai decode": _fmt((t.get("genai") or {}).get("decode_tok_s"), ".1f", " tok/s"),
        "RSS": _fmt(t.get("peak_rss_mb"), ".0f", " MB"),
        "VRAM": _fmt(t.get("peak_vram_mb"), ".0f", " MB"),
        "gate": gate,
    }
    return [cells[c] for c in cols]


def markdown(report: dict[str, Any]) -> str:
    ref = report["reference"]
    lines = [
        f"# edgetune bench: {report['run']}",
        "",
        (
            f"Task metric `{ref['metric']}` on {ref['examples']} held-out examples"
            if any(t.get("task_metric", {}).get("value") is not None for t in report["targets"])
            else f"No task metric: the {ref['examples']} held-out examples are text rows, with no answer "
            f"for `{ref['metric']}` to score (perplexity and KL only)"
        )
        + (
            " (the validation split, which chose the checkpoint: no test split)"
            if ref.get("split") == "valid"
            else ""
        )
        + ", greedy, at most "
        f"{report['settings']['max_new_tokens']} new tokens; KL and top-1 against `{ref['name']}` on the "
        f"first {report['settings']['kl_examples']} (mean over every position of each chat, prompt and "
        f"answer). "
        + (
            f"Latency: {report['settings']['prompt_tokens']}-token "
            f"prompt, {report['settings']['decode_tokens']} decoded tokens, median of "
            f"{report['settings']['repeats']} runs after a warm-up, {report['machine']['threads']} threads, "
            "each target in its own process."
            if report["settings"].get("latency", True)
            else "Latency: not measured (bench.latency: false)."
        ),
        "",
        *(f"- **warning**: {w}" for w in report.get("warnings", [])),
        *([""] if report.get("warnings") else []),
        "| " + " | ".join(columns(report)) + " |",
        "|" + "---|" * len(columns(report)),
    ]
    cols = columns(report)
    lines += ["| " + " | ".join(row_cells(t, cols)) + " |" for t in report["targets"]]
    lines += _interval_lines(report)
    lines += [
        f"- onnxruntime-genai could not time {t['name']}: {t['genai_error']}"
        for t in report["targets"]
        if t.get("genai_error")
    ]
    if report["baselines"]:  # bench.baselines: false leaves no section
        lines += ["", "## Fine-tuning against prompting the base model", ""]
    lines += [f"- {line}" for line in prompting_lines(report)]
    f = report.get("forgetting")
    if f:
        lines += [
            "",
            "## Forgetting",
            "",
            f"- KL(base || tuned) on the base model's answers to {f['prompts']} general prompts: "
            f"{f['kl_base_tuned']:.3f} (warning above {f['kl_warn']:g})",
            f"- perplexity on {f['passages']} general passages: base {f['ppl_base']:.2f}, tuned "
            f"{f['ppl_tuned']:.2f} ({f['ppl_ratio']:.2f}x; warning above {f['ppl_ratio_warn']:g}x)",
        ]
        lines += [f"- **warning**: {w}" for w in f.get("warnings", [])]
    m = report["machine"]
    if m.get("bandwidth_gb_s") is None or not any(t.get("decode_tok_s") for t in report["targets"]):
        return "\n".join(lines) + "\n"  # nothing decoded was timed
    lines += [
        "",
        "## Decode against the memory bandwidth",
        "",
        f"Measured read bandwidth in this run: {m['bandwidth_gb_s']:.1f} GB/s ({m['threads']} threads). "
        "Decoding reads every weight once per token, so size x decode tok/s is the bandwidth a target uses.",
        "",
        "| target | weights read per token | uses | of measured bandwidth |",
        "|---|---|---|---|",
    ]
    for t in report["targets"]:
        if t.get("decode_tok_s"):
            lines.append(
                f"| {t['name']} ({t['device']}) | <= {t['bytes_per_token'] / 1e6:.0f} MB | "
                f"{t['bandwidth_gb_s']:.2f} GB/s | "
                + (f"{t['bandwidth_share']:.0%} |" if t.get("bandwidth_share") is not None else "- (GPU) |")
            )
    return "\n".join(lines) + "\n"


def _scored(report: dict[str, Any], target: dict[str, Any]) -> int:
    """The examples a retention interval pairs: those the task metric scored (text rows, measured
    for perplexity only, are among the reference's `examples` but have no score)."""
    return len(target.get("scores") or []) or report["reference"]["examples"]


def _interval_lines(report: dict[str, Any]) -> list[str]:
    """What the retention and KL intervals are, and which gate verdicts they say are the sample's noise."""
    rule = report.get("gate_rule", {})
    lines = []
    measured = [t for t in report["targets"] if t.get("retention_interval")]
    if measured:
        lines += [
            "",
            f"interval: the retention's {measured[0]['retention_confidence']:.0%} interval, a paired bootstrap "
            f"over the {_scored(report, measured[0])} scored examples (each resample keeps an example's reference "
            "and target scores together)."
            + (f" Retention gates use `{rule['retention_evidence']}`." if rule else ""),
        ]
    from edgetune.bench.confidence import MIN_EXAMPLES

    counts = {len(t.get(key) or []) for t in report["targets"] for key in ("scores", "kl_scores")} - {0}
    if counts and min(counts) < MIN_EXAMPLES:
        lines += [
            "",
            f"No interval where a figure rests on fewer than {MIN_EXAMPLES} examples (here "
            f"{min(counts)}): a bootstrap of so few proves nothing.",
        ]
    with_kl = [t for t in report["targets"] if t.get("kl_interval")]
    if with_kl:
        kl_gate = rule.get("max_kl")
        lines += [
            "",
            f"KL's {with_kl[0]['kl_confidence']:.0%} interval: a bootstrap of the mean over the per-example "
            f"KL of the first {len(with_kl[0]['kl_scores'])} examples: "
            + ", ".join(
                f"{t['name']} {t['kl_interval'][0]:.2e} to {t['kl_interval'][1]:.2e}" for t in with_kl
            )
            + "."
            + (
                f" KL gates (max_kl {kl_gate:g}) use `{rule.get('kl_evidence', 'measured')}`."
                if kl_gate
                else ""
            ),
        ]
    noisy = [t for t in report["targets"] if t.get("gate_notes")]
    if noisy:
        lines += ["", "Gate verdicts within the sample's noise:", ""]
        lines += [f"- {t['name']} ({t['device']}): {'; '.join(t['gate_notes'])}" for t in noisy]
    return lines


def plot(report: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = [t for t in report["targets"] if t.get("retention") is not None]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in (
        (axes[0], "size_bytes", "file size (MB)"),
        (axes[1], "decode_tok_s", "decode tokens/s (CPU unless marked)"),
    ):
        for t in targets:
            x = t.get(key)
            if x is None:
                continue
            x = x / 1e6 if key == "size_bytes" else x
            interval = t.get("retention_interval")
            if interval:
                below, above = t["retention"] - interval[0], interval[1] - t["retention"]
                ax.errorbar(
                    x, t["retention"], yerr=[[max(below, 0)], [max(above, 0)]], fmt="o", ms=6, capsize=3
                )
            else:
                ax.scatter(x, t["retention"], s=40)
            ax.annotate(
                f"{t['name']}" + ("" if t["device"] == "cpu" else f" ({t['device']})"),
                (x, t["retention"]),
                fontsize=7,
                xytext=(4, 3),
                textcoords="offset points",
            )
        ax.set_xlabel(label)
        ax.set_ylabel(f"retention of {report['reference']['metric']}")
        ax.grid(alpha=0.3)
    axes[0].set_xscale("log")
    fig.suptitle(f"edgetune bench: quality against size and speed ({report['run']})", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def read_report(run_dir: Path) -> dict[str, Any]:
    """RUN_DIR/bench/report.json, or an InputError saying what is wrong with it."""
    from edgetune import strict_json
    from edgetune.errors import InputError

    path = run_dir / "bench" / "report.json"
    if not path.is_file() and not (run_dir / "recipe.yaml").is_file():
        raise InputError(f"{run_dir}: not a run directory (no recipe.yaml), so no bench report")
    if not path.is_file():
        raise InputError(f"{path}: no bench report; run `edgetune bench {run_dir}` first")
    try:
        report = strict_json.restore(json.loads(path.read_text(encoding="utf-8")))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: line {e.lineno}: not JSON ({e.msg})") from None
    from edgetune.bench.report_shape import report_problem

    if problem := report_problem(report):
        raise InputError(f"{path}: not an edgetune bench report ({problem})")
    return report


def write_report(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """The report's three files, each built and written whole before any takes its place: a
    report that cannot be shown, or a disk that fills while they are written, leaves the old three
    as they were, agreeing with each other."""
    paths = {"json": out_dir / "report.json", "md": out_dir / "report.md", "png": out_dir / "report.png"}
    contents = {
        paths["md"]: markdown(report).encode("utf-8"),
        paths["png"]: plot(report),
        # last: the JSON is what the next command reads
        paths["json"]: json_text(report).encode("utf-8"),
    }
    atomic_write_files(contents)
    return paths


def prompting_lines(report: dict[str, Any]) -> list[str]:
    """Each prompting baseline against the tuned model on the same examples, then the verdict:
    the report's section, and what bench and run say on the terminal."""
    lines = []
    for name, b in (report.get("baselines") or {}).items():
        if b.get("examples") == 0:  # text rows: no answer to score
            lines.append(
                f"base model {name.replace('_', ' ')}: no answers to score (the held-out rows are text)"
            )
            continue
        extra = (
            f", +{b['extra_prompt_tokens']:.0f} prompt tokens per request"
            if "extra_prompt_tokens" in b
            else ""
        )
        difference = b.get("tuned_minus_baseline", {})
        spread = (
            f" (difference {difference['mean']:+.3f}, {difference['confidence']:.0%} interval "
            f"{difference['interval'][0]:+.3f} to {difference['interval'][1]:+.3f})"
            if difference.get("interval")
            else f" (difference {difference['mean']:+.3f}, no interval)"
            if difference.get("mean") is not None
            else ""
        )
        lines.append(
            f"base model {name.replace('_', ' ')}: {report['reference']['metric']} "
            f"{_fmt(b['task_metric']['value'], '.3f')} against {_fmt(b.get('tuned_on_these'), '.3f')} for "
            f"the tuned model on the same {b.get('examples', '?')} examples{spread}{extra}"
        )
    verdict = report.get("tuning_beats_prompting")
    if verdict is not None:
        baselines = report.get("baselines") or {}
        # as run.py decides the verdict: the tuned model's score above each baseline's
        lost = [
            n
            for n, b in baselines.items()
            if not (b.get("tuned_on_these") or 0.0) > (b["task_metric"]["value"] or 0.0)
        ]
        beaten = [n for n in baselines if n not in lost]
        noise = report.get("tuning_beats_prompting_shown" if verdict else "prompting_beats_tuning_shown")
        lines.append(
            f"fine-tuning {'beats' if verdict else 'does NOT beat'} {_listed(beaten if verdict else lost)} "
            "prompting of its base on this task"
            + (f" (it beats {_listed(beaten)})" if not verdict and beaten else "")
            + (
                ""
                if noise is None
                else "; beyond these examples' noise"
                if noise
                else "; but within these examples' noise (an interval reaches 0, or too few examples differ): "
                + ("a good prompt may do" if verdict else "fine-tuning may still be worth it")
            )
        )
    return lines


def _listed(names: list[str]) -> str:
    """["zero_shot", "few_shot_3", "similar_shot_3"] as "zero-shot, 3-shot and similar-row 3-shot"."""
    shown = [_shots(name) for name in names]
    return " and ".join([", ".join(shown[:-1]), shown[-1]] if len(shown) > 2 else shown)


def _shots(baseline: str) -> str:
    """zero_shot as "zero-shot", few_shot_3 as "3-shot", similar_shot_3 as "similar-row 3-shot"."""
    if baseline == "zero_shot":
        return "zero-shot"
    kind, k = baseline.rsplit("_", 1)
    return f"similar-row {k}-shot" if kind == "similar_shot" else f"{k}-shot"


def print_findings(report: dict[str, Any], out, err) -> None:
    """After the table: the tuned model against prompting its base, and its forgetting warnings
    (they were in report.md alone: a run that lost to prompting said nothing on the terminal)."""
    from rich.markup import escape

    lines = prompting_lines(report)
    lost = report.get("tuning_beats_prompting") is False  # then the last line is that verdict
    for line in lines[:-1] if lost else lines:
        out.print(escape(line), soft_wrap=True)
    if lost:
        err.print(f"[yellow]warning:[/] {escape(lines[-1])}", soft_wrap=True)
    for warning in (report.get("forgetting") or {}).get("warnings", []):
        err.print(f"[yellow]warning:[/] forgetting: {escape(warning)}", soft_wrap=True)


def print_table(report: dict[str, Any], console) -> None:
    from rich.markup import escape

    from edgetune.console import print_rows

    ref = report["reference"]
    cols = columns(report)
    rows = []
    for t in report["targets"]:
        cells = row_cells(t, cols)
        colour = {"pass": "green", "fail": "red"}.get(t.get("gate"))
        if colour:
            cells[-1] = f"[{colour}]{cells[-1]}[/]"
        rows.append(cells)
    title = f"edgetune bench ({ref['metric']} on {ref['examples']} held-out examples)"
    print_rows(console, title, cols, rows, left=("device", "gate"))
    for t in report["targets"]:
        if t.get("genai_error"):  # in report.md too; the column is gone where nothing was timed
            console.print(
                f"[yellow]warning:[/] onnxruntime-genai could not time {t['name']}: {escape(t['genai_error'])}",
                soft_wrap=True,
            )
        for note in t.get("gate_notes", []):
            console.print(
                f"[yellow]gate within noise:[/] {t['name']} ({t['device']}): {note}", soft_wrap=True
            )
