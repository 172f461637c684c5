"""Atomic writes: a file or a folder appears complete or not at all.

Everything is first written into a temporary sibling (same folder, so the final ``os.replace`` is a rename on one
file system) and then swapped in. A process killed while writing leaves the previous version (or nothing) and at most
a hidden ``.<name>.tmp-*`` entry, which the next write of the same folder sweeps away. A folder is replaced by two
renames (the old one to ``.<name>.old``, the new one into place): a kill between them leaves no folder, only those
two hidden ones, and :func:`recover_folder` puts the newest usable one back. The results get the permissions the
user's umask gives (e.g. files 0644, folders 0755), not the private ones of ``tempfile``.

:func:`check_writable` tells, before any work, whether an output can be written where the user asked, and
:func:`earlier_outputs` which files of an output folder a command may replace.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pandas is only needed by the caller that has a table
    import pandas as pd

__all__ = ["atomic_write", "write_text", "write_csv", "atomic_folder", "earlier_outputs", "recover_folder",
           "check_writable"]


def _umask() -> int:
    """The process's umask, read without changing it where the system shows it (Linux), else by setting it back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Permissions of a new file under the user's umask (0644 with the usual 022)."""
    return 0o666 & ~_umask()


def folder_mode() -> int:
    """Permissions of a new folder under the user's umask (0755 with the usual 022)."""
    return 0o777 & ~_umask()


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
        tmp.chmod(file_mode())
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
    ``folder``. Leftovers of an earlier write of ``folder`` killed half-way (``.<name>.tmp-*``) are removed first:
    one folder has one writer at a time (call :func:`recover_folder` before, where a leftover may be worth keeping).
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    for stale in folder.parent.glob(f".{glob.escape(folder.name)}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        write(tmp)
        tmp.chmod(folder_mode())
        for entry in tmp.iterdir():
            if entry.is_file():
                entry.chmod(file_mode())
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


def earlier_outputs(out: Path, names: Sequence[str], manifest: str, keys: Sequence[str], command: str,
                    overwrite: bool) -> list[str] | None:
    """What a command writing the files ``names`` into the folder ``out`` may replace there (``merge_into`` of
    :func:`atomic_folder`): ``None`` when ``out`` is missing or empty; the files an earlier run of the command wrote,
    when ``out`` holds its JSON ``manifest`` with every key of ``keys`` (its ``files`` list, else all ``names``);
    with ``overwrite``, a folder holding other files too, but then only the files this run writes are replaced.
    Otherwise one-line ``ValueError``, before any work."""
    if not out.is_dir() or not any(out.iterdir()):
        return None
    try:
        earlier = json.loads((out / manifest).read_text())
        if isinstance(earlier, dict) and all(key in earlier for key in keys):
            return [name for name in earlier.get("files", names) if name in names]
    except (OSError, ValueError):
        pass
    if not overwrite:
        raise ValueError(f"--out {out} holds files that {command} did not write: give a new or empty folder, or "
                         "pass --overwrite to replace only the files named like its outputs")
    return []


def recover_folder(folder: str | os.PathLike, score: Callable[[Path], float | None]) -> Path | None:
    """``folder`` if it exists; else the leftover of an :func:`atomic_folder` killed between its two renames (the old
    ``.<name>.old`` or a finished ``.<name>.tmp-*``) with the highest ``score`` (``None``: unusable), renamed back to
    ``folder``; else ``None``. ``score`` checks that a leftover is complete (e.g. a checkpoint that loads) and ranks
    them (e.g. by training step)."""
    folder = Path(folder)
    if folder.exists():
        return folder
    tmp = folder.parent.glob(f".{glob.escape(folder.name)}.tmp-*")
    leftovers = [p for p in (folder.with_name(f".{folder.name}.old"), *tmp) if p.is_dir()]
    scored = [(value, p) for p in leftovers if (value := score(p)) is not None]
    if not scored:
        return None
    os.replace(max(scored, key=lambda item: item[0])[1], folder)
    return folder


def check_writable(path: str | os.PathLike, option: str = "--out", folder: bool = True) -> Path:
    """Check before any work that the output ``path`` (a folder, or a file with ``folder=False``) can be written:
    ``ValueError`` naming ``option`` when it is a file where a folder is wanted (or the reverse), or when the nearest
    existing folder on its way cannot be written into (tried with a temporary file). Returns ``path``."""
    path = Path(path).expanduser()
    if folder and path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} is a file: give a directory (it is created if missing)")
    if not folder and path.is_dir():
        raise ValueError(f"{option} {path} is a directory: give a file name")
    existing = path if folder and path.is_dir() else path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{option} {path}: {existing} is a file, not a folder")
    try:
        handle, probe = tempfile.mkstemp(dir=existing, prefix=".cvae-write-test-")
    except OSError as exc:
        raise ValueError(f"{option} {path}: cannot write in {existing} ({exc.strerror or exc}): choose another place") \
            from None
    os.close(handle)
    os.unlink(probe)
    return path
