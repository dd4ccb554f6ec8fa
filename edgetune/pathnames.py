"""Names edgetune derives from a user's path, and paths too long for a run directory.

The lock file and the set-aside run are named after the run directory (`.NAME.lock`,
`NAME.previous`, `.NAME.previous.tmp`): for a NAME near the file system's limit on one name (255
bytes on Linux, a legal name) they came out longer than it allows, and the set-aside failed while
the lock was silently skipped. Such a name is shortened, keeping a hash of the whole NAME: two long
names never share one, and the same NAME always gets the same one (the lock must be found again).
A run directory's own path the system cannot take is refused up front (refuse_unusable).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from edgetune.errors import InputError

NAME_MAX = 255  # where the system does not say (os.pathconf): Linux's, macOS's
PATH_MAX = 4096
HASH_CHARS = 16
# what a run writes below its directory, the deepest being about
# checkpoints/checkpoint-NNNNNN/.edgetune-complete.json.XXXXXXXX.tmp: a run directory must leave it room
ROOM_BELOW = 128


def _limit(folder: Path | str, key: str, fallback: int) -> int:
    """The file system's limit `key` ("PC_NAME_MAX", "PC_PATH_MAX") where `folder` is or would be."""
    here = os.path.abspath(folder)
    while not os.path.isdir(here) and here != os.path.dirname(here):  # (isdir: False on any error)
        here = os.path.dirname(here)
    try:
        value = os.pathconf(here, key)
    except (OSError, ValueError, AttributeError):  # no such limit here, or no pathconf (Windows)
        return fallback
    return value if value > 0 else fallback


def _size(text: str) -> int:
    return len(os.fsencode(text))


def beside(path: Path, prefix: str = "", suffix: str = "") -> Path:
    """`path`'s sibling named prefix + its name + suffix; where that is over the folder's limit on
    a name, the name's end gives way to a hash of the whole name (prefix and suffix stay, so the
    patterns that find leftovers, ".*.tmp", still do)."""
    name = path.name
    limit = _limit(path.parent, "PC_NAME_MAX", NAME_MAX)
    if _size(prefix + name + suffix) <= limit:
        return path.parent / f"{prefix}{name}{suffix}"
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:HASH_CHARS]
    room = limit - _size(prefix + suffix) - len(digest) - 1
    kept = name[:room]
    while _size(kept) > room:  # by characters: a multi-byte one is never cut in half
        kept = kept[:-1]
    return path.parent / f"{prefix}{kept}-{digest}{suffix}"


def refuse_unusable(path: Path | str, given_as: str) -> None:
    """One InputError, naming the option or argument that gave `path`, where the system cannot take
    it as a run directory: a name in it over the limit on a name, or the whole (absolute, as edgetune
    uses it) over the limit on a path less the room the run's own files need below it. Found later,
    it was an "internal error: OSError: [Errno 36] File name too long" from whatever touched it first."""
    name_max = _limit(path, "PC_NAME_MAX", NAME_MAX)
    for part in Path(path).parts:
        if _size(part) > name_max:
            raise InputError(
                f"{given_as}: the name {_shown(part)} is {_size(part)} bytes long; this file system "
                f"allows {name_max}"
            )
    whole = _size(os.path.abspath(path))
    most = _limit(path, "PC_PATH_MAX", PATH_MAX) - ROOM_BELOW
    if whole > most:
        raise InputError(
            f"{given_as}: the path {_shown(str(path))} is {whole} bytes long (as an absolute path); "
            f"edgetune takes one of up to {most} (the system's limit, less room for the files a run "
            "writes below it)"
        )


def shortened(text: str, keep: int = 28) -> str:
    """A long name or path as an error names it: its start and end, not thousands of characters."""
    return text if len(text) <= 2 * keep + 4 else f"{text[:keep]}...{text[-keep:]}"


def _shown(text: str) -> str:
    return repr(shortened(text))
