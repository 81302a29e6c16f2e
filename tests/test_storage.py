"""storage.py: safe joins of untrusted names, atomic writes with the umask's permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from avsr_cli.errors import UnsafeNameError
from avsr_cli.storage import atomic_open, atomic_write_text, safe_join


@pytest.mark.parametrize(
    "names",
    [("..",), ("a", "../../b"), ("/etc/passwd",), ("a/../../b",), ("",), ("a\0b",), (".",), ("a/..",)],
)
def test_safe_join_refuses_names_leading_outside(tmp_path, names):
    with pytest.raises(UnsafeNameError, match="unsafe name"):
        safe_join(tmp_path, *names)


@pytest.mark.parametrize("names", [("a",), ("a", "b.json"), ("sub/dir/file",), ("a/../b",), ("x..y",)])
def test_safe_join_keeps_names_inside(tmp_path, names):
    path = safe_join(tmp_path, *names)
    assert path == tmp_path.joinpath(*names)
    assert Path(os.path.normpath(path)).is_relative_to(tmp_path)


def test_atomic_write_honours_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640
    os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "b.txt", "y")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o644


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    (tmp_path / "out.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(tmp_path / "out.txt") as f:
            f.write("half")
            raise RuntimeError("killed")
    assert (tmp_path / "out.txt").read_text() == "old" and sorted(tmp_path.iterdir()) == [
        tmp_path / "out.txt"
    ]
