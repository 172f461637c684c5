"""Atomic writes: a file or a folder appears complete or not at all.

Everything is first written into a temporary sibling (same folder, so the final ``os.replace`` is a rename on one
file system) and then swapped in. A process killed while writing leaves the previous version (or nothing) and at most
a hidden ``.<name>.tmp-*`` entry. The results get ordinary permissions (files 0644, folders 0755), not the private
ones of ``tempfile``.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pandas is only needed by the caller that has a table
    import pandas as pd

__all__ = ["atomic_write", "write_text", "write_csv", "atomic_folder"]

FILE_MODE, FOLDER_MODE = 0o644, 0o755


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Create or replace the file ``path``: ``write(tmp)`` fills a temporary file beside it, which is then renamed.

    The parent folder is created if needed; on any error (or interrupt) the temporary file is removed and ``path``
    is left as it was. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    os.close(handle)
    tmp = Path(name)
    try:
        write(tmp)
        tmp.chmod(FILE_MODE)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_csv(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``table`` (without its index) as CSV to ``path`` atomically."""
    return atomic_write(path, lambda tmp: table.to_csv(tmp, index=False))


def atomic_folder(folder: str | os.PathLike, write: Callable[[Path], None], *,
                  merge_into: Iterable[str] | None = None) -> Path:
    """Create ``folder`` from ``write(tmp)``, which fills a temporary sibling folder.

    By default ``folder`` is replaced as a whole: an existing one is renamed to ``.<name>.old`` just before the new
    one is renamed into place, then removed. With ``merge_into`` (the names of every file this kind of folder may
    hold), an existing ``folder`` is kept with whatever else it holds: the new files are moved into it one by one,
    and the names of ``merge_into`` that this write did not produce are removed (they would be stale). Returns
    ``folder``.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        write(tmp)
        tmp.chmod(FOLDER_MODE)
        for entry in tmp.iterdir():
            if entry.is_file():
                entry.chmod(FILE_MODE)
                _fsync(entry)
        if merge_into is not None and folder.is_dir():
            for name in merge_into:
                if not (tmp / name).exists():
                    (folder / name).unlink(missing_ok=True)
            for entry in tmp.iterdir():
                os.replace(entry, folder / entry.name)
            tmp.rmdir()
            return folder
        old = folder.with_name(f".{folder.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
