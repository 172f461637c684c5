"""cvae.io.atomic: a file or a folder appears complete or not at all, with ordinary permissions."""
from __future__ import annotations

import stat
from pathlib import Path

import pandas as pd
import pytest

from cvae.io.atomic import atomic_folder, atomic_write, write_csv, write_text


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def listing(folder: Path) -> dict[str, str]:
    """``{name: text}`` of every entry of ``folder`` (hidden ones included)."""
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


class Boom(RuntimeError):
    pass


def test_atomic_write_replaces_a_file_and_gives_it_mode_644(tmp_path):
    path = tmp_path / "new" / "notes.txt"  # the parent folder is created
    assert atomic_write(path, lambda tmp: tmp.write_text("first")) == path
    assert path.read_text() == "first" and mode(path) == 0o644  # not tempfile's private 0o600
    path.chmod(0o600)
    atomic_write(path, lambda tmp: tmp.write_bytes(b"second"))
    assert path.read_text() == "second" and mode(path) == 0o644
    assert listing(path.parent) == {"notes.txt": "second"}  # no temporary file beside it


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("old")
    seen = []

    def failing(tmp: Path) -> None:
        tmp.write_text("half written")
        seen.append(tmp)
        raise Boom("disk full")

    with pytest.raises(Boom, match="disk full"):
        atomic_write(path, failing)
    assert listing(tmp_path) == {"notes.txt": "old"}
    # the writer wrote into a hidden sibling, never into the file itself
    assert seen[0].parent == tmp_path and seen[0].name.startswith(".notes.txt.tmp-") and not seen[0].exists()


def test_write_text_and_write_csv(tmp_path):
    write_text(tmp_path / "a.md", "é\n")
    assert (tmp_path / "a.md").read_bytes() == "é\n".encode()
    table = pd.DataFrame({"x": [1, 2], "y": ["a", "b"]})
    write_csv(table, tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text() == "x,y\n1,a\n2,b\n"
    assert mode(tmp_path / "a.md") == mode(tmp_path / "t.csv") == 0o644


def fill(files: dict[str, str]):
    def write(tmp: Path) -> None:
        for name, text in files.items():
            (tmp / name).write_text(text)
    return write


def test_atomic_folder_replaces_the_folder_as_a_whole(tmp_path):
    folder = tmp_path / "result"
    assert atomic_folder(folder, fill({"a.txt": "1", "b.txt": "2"})) == folder
    assert listing(folder) == {"a.txt": "1", "b.txt": "2"}
    assert mode(folder) == 0o755 and mode(folder / "a.txt") == 0o644
    atomic_folder(folder, fill({"c.txt": "3"}))
    assert listing(folder) == {"c.txt": "3"}  # the old content is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]  # no .result.tmp-* or .result.old


def test_atomic_folder_keeps_the_old_folder_when_the_writer_fails(tmp_path):
    folder = tmp_path / "result"
    atomic_folder(folder, fill({"a.txt": "1"}))

    def failing(tmp: Path) -> None:
        (tmp / "a.txt").write_text("new")
        raise Boom("interrupted")

    with pytest.raises(Boom):
        atomic_folder(folder, failing)
    assert listing(folder) == {"a.txt": "1"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]
    with pytest.raises(Boom):
        atomic_folder(tmp_path / "never", failing)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]


def test_atomic_folder_merge_keeps_other_files_and_drops_stale_named_ones(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")  # not one of the named files: kept
    (folder / "warped.nii").write_text("old warped")  # named and written again: replaced
    (folder / "warped_seg.nii").write_text("old seg")  # named, not written this time: stale, removed
    named = ("warped.nii", "warped_seg.nii", "metrics.json")
    atomic_folder(folder, fill({"warped.nii": "new warped", "metrics.json": "{}"}), merge_into=named)
    assert listing(folder) == {"metrics.json": "{}", "notes.txt": "mine", "warped.nii": "new warped"}
    assert mode(folder / "warped.nii") == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    # into a folder that does not exist yet, a merge is a plain creation
    atomic_folder(tmp_path / "fresh", fill({"metrics.json": "{}"}), merge_into=named)
    assert listing(tmp_path / "fresh") == {"metrics.json": "{}"}
