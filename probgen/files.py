"""Files written whole or not at all: one atomic write for every file probgen writes.

:func:`replacing` gives a temporary name next to the file; whatever is written there
becomes the file in one rename (``os.replace``), after it is on disk (``fsync``), with the
permissions a new file gets in that folder (0666 less the umask, as ``open`` would give).
A crash or a kill at any moment leaves the previous file or the new one, never half a
file; the temporary files a kill leaves behind (``.<name>.<random>.part``) are removed by
the next write of the same file. :func:`write_text`, :func:`write_bytes` and
:func:`torch_save` are the three writes on it.

Checkpoints (:func:`probgen.train.checkpoint.save_checkpoint`), model folders
(:mod:`probgen.models.pretrained`) and the data caches (:mod:`probgen.data`) write
through it; errors are the file system's own ``OSError`` (or the writer's), raised after
the temporary file is removed, for the caller to word.

Examples:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from probgen.files import replacing, write_text
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = write_text(folder / "a.json", "{}")
    >>> try:
    ...     with replacing(folder / "a.json") as tmp:
    ...         _ = tmp.write_text("half")
    ...         raise KeyboardInterrupt
    ... except KeyboardInterrupt:
    ...     pass
    >>> (folder / "a.json").read_text(), sorted(p.name for p in folder.iterdir())
    ('{}', ['a.json'])
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Union

import torch

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["new_file_mode", "orphans", "replacing", "torch_save", "write_bytes", "write_text"]


def orphans(path: PathLike) -> list[Path]:
    """Temporary files of earlier writes of ``path`` that a kill left behind."""
    path = Path(path)
    prefix = f".{path.name}."
    try:
        return [
            p
            for p in path.parent.iterdir()
            if p.name.startswith(prefix) and p.name.endswith(".part") and p.is_file()
        ]
    except OSError:
        return []


def _remove(path: str | Path | None) -> None:
    if path is not None:
        with contextlib.suppress(OSError):
            os.unlink(path)


def new_file_mode(folder: PathLike) -> int:
    """The permissions a new file gets in ``folder``: 0666 less the process's umask, read
    without changing it (from ``/proc``, else from a probe file made there)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    fd, probe = tempfile.mkstemp(dir=folder)
    os.close(fd)
    try:
        open(probe + ".m", "x").close()
        return os.stat(probe + ".m").st_mode & 0o777
    finally:
        _remove(probe)
        _remove(probe + ".m")


@contextlib.contextmanager
def replacing(path: PathLike, *, sync: bool = True, clean: bool = True) -> Iterator[Path]:
    """A temporary path next to ``path``; on a clean exit of the block it replaces ``path``.

    The folder is created when missing, and (``clean``) earlier writes' leftovers
    (:func:`orphans`) are removed first. On leaving the block the temporary file is flushed to disk
    (``sync``: ``os.fsync``, so that a power loss after the rename does not leave an empty
    file), given the permissions of a new file (:func:`new_file_mode`) and renamed over
    ``path``. On any error, in the block or after it, the temporary file is removed and
    the error raised; ``path`` is as it was.

    Args:
        path: the file to write.
        sync: flush the file to disk before the rename.
        clean: remove the leftovers of earlier writes first; ``False`` where several
            processes may write the same file at once (a shared cache: each would take
            the others' files being written for leftovers).

    Yields:
        The temporary path (an empty file): write it, by name or by opening it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for orphan in orphans(path) if clean else ():
        _remove(orphan)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if sync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        # mkstemp creates 0600: give the file what a new file gets here
        os.chmod(tmp, new_file_mode(path.parent))
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def write_bytes(path: PathLike, data: bytes, *, sync: bool = True, clean: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`replacing`); returns ``path``."""
    with replacing(path, sync=sync, clean=clean) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(
    path: PathLike, text: str, *, encoding: str = "utf-8", sync: bool = True, clean: bool = True
) -> Path:
    """Write ``text`` to ``path`` atomically (:func:`replacing`); returns ``path``."""
    with replacing(path, sync=sync, clean=clean) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


def torch_save(obj: Any, path: PathLike, *, sync: bool = True, clean: bool = True) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (:func:`replacing`); returns ``path``."""
    with replacing(path, sync=sync, clean=clean) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def sha256(path: PathLike) -> str:
    """The SHA-256 of a file's bytes, as hex (read in 1 MiB blocks): the sums written beside
    model folders' weights and the shipped classifier's."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
