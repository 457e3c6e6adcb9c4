"""probgen.files: a file is written whole or not at all, on disk before it is renamed, with
a new file's permissions; the leftovers of a killed write go at the next write."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from probgen import files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_a_write_replaces_the_file_with_a_new_files_permissions(tmp_path):
    target = tmp_path / "sub" / "a.txt"  # the folder is made
    assert files.write_text(target, "one") == target and target.read_text() == "one"
    files.write_bytes(target, b"two")
    assert target.read_bytes() == b"two" and _names(target.parent) == ["a.txt"]
    made = tmp_path / "made-by-open"
    made.write_text("x")  # what any new file gets here
    assert (
        (target.stat().st_mode & 0o777)
        == (made.stat().st_mode & 0o777)
        == files.new_file_mode(tmp_path)
    )
    files.torch_save({"w": torch.arange(3)}, tmp_path / "t.pt")
    assert torch.equal(torch.load(tmp_path / "t.pt", weights_only=True)["w"], torch.arange(3))


def test_an_error_in_the_write_leaves_the_old_file_and_no_leftover(tmp_path):
    target = tmp_path / "a.json"
    files.write_text(target, "{}")
    with pytest.raises(KeyboardInterrupt), files.replacing(target) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert target.read_text() == "{}" and _names(tmp_path) == ["a.json"]


def test_a_refused_rename_leaves_the_old_file_and_no_leftover(tmp_path, monkeypatch):
    target = tmp_path / "a.json"
    files.write_text(target, "{}")

    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="No space left"):
        files.write_text(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "{}" and _names(tmp_path) == ["a.json"]


def test_the_file_is_on_disk_before_it_is_renamed(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("rename"), real_replace(a, b)))
    files.write_text(tmp_path / "a", "x")
    assert events == ["fsync", "rename"]
    events.clear()
    files.write_text(tmp_path / "a", "y", sync=False)
    assert events == ["rename"]


def test_a_killed_writers_leftover_goes_at_the_next_write(tmp_path):
    """A SIGKILL in the middle of a write leaves the old file and a ``.part``; the next
    write of that file removes it (another file's, or a concurrent cache writer's with
    ``clean=False``, stays)."""
    target = tmp_path / "ck.pt"
    files.write_text(target, "old")
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {ROOT!r})
        from probgen import files
        with files.replacing({str(target)!r}) as tmp:
            tmp.write_text("half")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    left = files.orphans(target)
    assert len(left) == 1 and target.read_text() == "old"
    other = tmp_path / ".other.pt.abc.part"
    other.write_text("not ours")
    files.write_text(target, "kept", clean=False)
    assert left[0].exists()
    files.write_text(target, "new")
    assert not left[0].exists() and other.exists() and target.read_text() == "new"
