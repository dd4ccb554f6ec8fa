"""Names edgetune derives from a user's path.

The lock file and the set-aside run are named after the run directory (`.NAME.lock`,
`NAME.previous`, `.NAME.previous.tmp`): for a NAME near the file system's limit on one name (255
bytes on Linux, a legal name) they came out longer than it allows, and the set-aside failed while
the lock was silently skipped. Such a name is shortened, keeping a hash of the whole NAME: two long
names never share one, and the same NAME always gets the same one (the lock must be found again).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

NAME_MAX = 255  # where the system does not say (os.pathconf): Linux's, macOS's
HASH_CHARS = 16


def _limit(folder: Path | str, key: str, fallback: int) -> int:
    """The file system's limit `key` ("PC_NAME_MAX") where `folder` is or would be."""
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
