"""cvae.io.atomic: a file or a folder appears complete or not at all, with the permissions of the user's umask;
leftovers of a killed write are swept or recovered; outputs are checked for writability before any work."""
from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from cvae.io.atomic import atomic_folder, atomic_write, check_writable, recover_folder, write_csv, write_text

from conftest import one_line_error


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def file_mode() -> int:
    """The reference: the mode the operating system gives a file made by ``open`` under the current umask."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "plain"
        path.write_text("")
        return mode(path)


def folder_mode() -> int:
    """The reference: the mode the operating system gives a folder made by ``mkdir`` under the current umask."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "plain"
        path.mkdir()
        return mode(path)


def listing(folder: Path) -> dict[str, str]:
    """``{name: text}`` of every entry of ``folder`` (hidden ones included)."""
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


class Boom(RuntimeError):
    pass


def test_atomic_write_replaces_a_file_and_gives_it_the_umask_mode(tmp_path):
    path = tmp_path / "new" / "notes.txt"  # the parent folder is created
    assert atomic_write(path, lambda tmp: tmp.write_text("first")) == path
    assert path.read_text() == "first" and mode(path) == file_mode() != 0o600  # not tempfile's private 0o600
    path.chmod(0o600)
    atomic_write(path, lambda tmp: tmp.write_bytes(b"second"))
    assert path.read_text() == "second" and mode(path) == file_mode()
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
    assert mode(tmp_path / "a.md") == mode(tmp_path / "t.csv") == file_mode()


def fill(files: dict[str, str]):
    def write(tmp: Path) -> None:
        for name, text in files.items():
            (tmp / name).write_text(text)
    return write


def test_atomic_folder_replaces_the_folder_as_a_whole(tmp_path):
    folder = tmp_path / "result"
    assert atomic_folder(folder, fill({"a.txt": "1", "b.txt": "2"})) == folder
    assert listing(folder) == {"a.txt": "1", "b.txt": "2"}
    assert mode(folder) == folder_mode() and mode(folder / "a.txt") == file_mode()
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
    assert mode(folder / "warped.nii") == file_mode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    # into a folder that does not exist yet, a merge is a plain creation
    atomic_folder(tmp_path / "fresh", fill({"metrics.json": "{}"}), merge_into=named)
    assert listing(tmp_path / "fresh") == {"metrics.json": "{}"}


def test_permissions_follow_the_users_umask(tmp_path):
    previous = os.umask(0o027)  # a group-readable, world-private setup
    try:
        write_text(tmp_path / "notes.txt", "x")
        atomic_folder(tmp_path / "result", fill({"a.txt": "1"}))
        folder = tmp_path / "merged"
        folder.mkdir()
        atomic_folder(folder, fill({"b.txt": "2"}), merge_into=("b.txt",))
        assert mode(tmp_path / "notes.txt") == 0o640
        assert mode(tmp_path / "result") == 0o750 and mode(tmp_path / "result" / "a.txt") == 0o640
        assert mode(folder / "b.txt") == 0o640
    finally:
        os.umask(previous)
    write_text(tmp_path / "later.txt", "y")  # the umask is read at each write, not once
    assert mode(tmp_path / "later.txt") == 0o666 & ~previous


def test_atomic_folder_sweeps_the_leftovers_of_a_killed_write_of_the_same_folder(tmp_path):
    for name in (".result.tmp-killed1", ".result.tmp-killed2", ".other.tmp-running", ".resultx.tmp-1"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "half.txt").write_text("half")
    atomic_folder(tmp_path / "result", fill({"a.txt": "1"}))
    # only the leftovers of `result` go; another folder's temporary folder may be a live write
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-running", ".resultx.tmp-1", "result"]
    (tmp_path / ".result.tmp-killed3").mkdir()
    atomic_folder(tmp_path / "result", fill({"b.txt": "2"}), merge_into=("a.txt", "b.txt"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-running", ".resultx.tmp-1", "result"]
    assert listing(tmp_path / "result") == {"b.txt": "2"}


def leftover(path: Path, step: int | None) -> Path:
    """A folder of a killed save: ``step.txt`` holds its step, or is missing (an incomplete save)."""
    path.mkdir()
    if step is not None:
        (path / "step.txt").write_text(str(step))
    return path


def step_of(folder: Path) -> int | None:
    return int((folder / "step.txt").read_text()) if (folder / "step.txt").is_file() else None


def test_recover_folder_puts_back_the_best_usable_leftover(tmp_path):
    last = tmp_path / "last"
    leftover(tmp_path / ".last.old", 200)
    leftover(tmp_path / ".last.tmp-a", 300)
    leftover(tmp_path / ".last.tmp-b", None)  # incomplete: never chosen
    (tmp_path / ".last.tmp-c").write_text("a file, not a folder")
    leftover(tmp_path / ".lastx.tmp-d", 900)  # another folder's leftover
    scored = []

    def score(path: Path) -> int | None:
        scored.append(path.name)
        return step_of(path)

    assert recover_folder(last, score) == last
    assert step_of(last) == 300 and not (tmp_path / ".last.tmp-a").exists()
    assert sorted(scored) == [".last.old", ".last.tmp-a", ".last.tmp-b"]
    assert (tmp_path / ".last.old").is_dir() and (tmp_path / ".lastx.tmp-d").is_dir()  # the others are left as is
    # an existing folder is returned as it is, without looking at any leftover
    scored.clear()
    assert recover_folder(last, score) == last and scored == [] and step_of(last) == 300


def test_recover_folder_falls_back_to_the_old_folder_or_gives_none(tmp_path):
    leftover(tmp_path / ".last.old", 200)
    leftover(tmp_path / ".last.tmp-x", None)
    assert recover_folder(tmp_path / "last", step_of) == tmp_path / "last"
    assert step_of(tmp_path / "last") == 200 and not (tmp_path / ".last.old").exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    assert recover_folder(empty / "last", step_of) is None
    leftover(empty / ".last.tmp-y", None)
    before = sorted(p.name for p in empty.iterdir())
    assert recover_folder(empty / "last", step_of) is None
    assert sorted(p.name for p in empty.iterdir()) == before == [".last.tmp-y"]  # nothing renamed
    assert recover_folder(tmp_path / "nowhere" / "last", step_of) is None


def test_check_writable_accepts_a_new_or_existing_place_and_leaves_nothing(tmp_path):
    assert check_writable(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # nothing is created
    (tmp_path / "run").mkdir()
    assert check_writable(tmp_path / "run") == tmp_path / "run"
    assert check_writable(tmp_path / "run" / "codes.csv", folder=False) == tmp_path / "run" / "codes.csv"
    (tmp_path / "codes.csv").write_text("old")
    assert check_writable(tmp_path / "codes.csv", folder=False) == tmp_path / "codes.csv"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["codes.csv", "run"]  # no probe file left


def test_check_writable_refuses_the_wrong_kind_of_place(tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    text = one_line_error(ValueError, lambda: check_writable(a_file, option="--results"))
    assert text.startswith(f"--results {a_file}") and "is a file: give a directory" in text
    text = one_line_error(ValueError, lambda: check_writable(tmp_path, option="--out", folder=False))
    assert text.startswith(f"--out {tmp_path}") and "is a directory: give a file name" in text
    for inside in (a_file / "run", a_file / "run" / "deeper"):  # a file on the way
        text = one_line_error(ValueError, lambda: check_writable(inside))
        assert text.startswith(f"--out {inside}") and f"{a_file} is a file, not a folder" in text
    text = one_line_error(ValueError, lambda: check_writable(a_file / "codes.csv", folder=False))
    assert f"{a_file} is a file, not a folder" in text
    assert a_file.read_text() == "x"


def test_check_writable_refuses_a_folder_that_cannot_be_written(tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("cvae.io.atomic.tempfile.mkstemp", denied)  # the tests run as root: simulate it
    (tmp_path / "shared").mkdir()
    for path, folder in ((tmp_path / "shared", True), (tmp_path / "shared" / "new" / "run", True),
                         (tmp_path / "shared" / "codes.csv", False)):
        text = one_line_error(ValueError, lambda: check_writable(path, option="--out", folder=folder))
        assert text.startswith(f"--out {path}: cannot write in {tmp_path / 'shared'} (Permission denied)"), text
        assert "choose another place" in text
    assert list((tmp_path / "shared").iterdir()) == []
