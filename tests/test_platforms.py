"""edgetune where the platform lacks an API Linux has (Windows, macOS), simulated on Linux by
taking the API away: what it needs falls back, and nothing fails for want of it."""

import os
import stat


def test_an_atomic_write_without_fchmod_works_and_gets_the_mode(tmp_path, monkeypatch):
    """os.fchmod is missing on Windows before Python 3.13: every atomic write failed there with
    AttributeError. The mode is now set by the temporary file's path once it is closed."""
    from edgetune.rundir import atomic_write_files

    monkeypatch.delattr(os, "fchmod")
    kept = tmp_path / "manifest.json"
    kept.write_text("{}")
    kept.chmod(0o640)  # the user's mode on the file being replaced outlives the write
    fresh = tmp_path / "report.md"
    atomic_write_files({kept: b'{"a": 1}', fresh: b"# report\n"})
    assert kept.read_bytes() == b'{"a": 1}' and fresh.read_bytes() == b"# report\n"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o640
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "report.md"]
