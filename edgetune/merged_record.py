"""What merge wrote beside the merged weights, recorded so that later stages can tell an edit of
RUN/merged/ from a problem of their own.

export and bench render the data, and check the exported files, with the merged model's
tokenizer, chat template and generation config: a chat_template.jinja edited after the merge made
them blame a row of data.jsonl, and a generation_config.json whose eos_token_id was changed went
unsaid. merge records each such file's digest in its manifest stage (a list, so that a merge
again replaces it whole); a run merged by an earlier edgetune records none, and nothing is said.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from rich.markup import escape

from edgetune.errors import DataError
from edgetune.rundir import changed_names, file_digests, read_manifest

RECORD = "side_files"  # stages.merge.side_files: [[path below merged/, sha256], ...]
# the weights: hashed by the stage fingerprints, too large to hash again at every check
WEIGHTS = (".safetensors", ".bin", ".pt", ".pth")

T = TypeVar("T")


def side_files(merged: Path) -> list[list[str]]:
    """[path below `merged`, sha256] of each file there but the weights (config, generation config,
    tokenizer, chat templates, settings), in path order."""
    return [list(item) for item in file_digests(merged, lambda p: p.name.endswith(WEIGHTS)).items()]


def changed_since_merge(run_dir: Path) -> list[str]:
    """The files of RUN/merged/ (see side_files) added, removed or changed since merge wrote them;
    none where the merge recorded none."""
    recorded = read_manifest(run_dir).get("stages", {}).get("merge", {}).get(RECORD)
    merged = run_dir / "merged"
    if not isinstance(recorded, list) or not merged.is_dir():
        return []
    known = {str(entry[0]): entry[1] for entry in recorded if isinstance(entry, list) and len(entry) == 2}
    return changed_names(known, file_digests(merged, lambda p: p.name.endswith(WEIGHTS)))


def _named(run_dir: Path, names: list[str]) -> str:
    return ", ".join(str(run_dir / "merged" / name) for name in names)


@contextmanager
def merged_edits_named(run_dir: Path | None, console=None) -> Iterator[None]:
    """Around the stages that render data with the merged model's files (export, bench): a warning
    for each file of RUN/merged/ edited since merge, and a data error raised inside said as caused
    by that edit (data.jsonl is no longer blamed for a template edited after the merge)."""
    changed = changed_since_merge(run_dir) if run_dir is not None else []
    try:
        yield
    except DataError as refused:
        if not changed:
            raise
        raise DataError(
            f"{_named(run_dir, changed)} changed since merge (edit it back, or run `edgetune merge` to "
            f"write it again); with it, {refused}"
        ) from refused
    if changed and console is not None:
        console.print(
            f"[yellow]warning:[/] {escape(_named(run_dir, changed))} changed since merge: export and bench "
            "use the merged model as it is now (`edgetune merge` writes it again)",
            soft_wrap=True,
        )


def rendered(run_dir: Path | None, console, render: Callable[[], T]) -> T:
    """render() within merged_edits_named."""
    with merged_edits_named(run_dir, console):
        return render()
