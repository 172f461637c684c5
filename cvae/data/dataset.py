"""Torch dataset of preprocessed (ES, ED) pairs with an on-disk cache (one ``.npz`` per subject)."""
from __future__ import annotations

import hashlib
import warnings
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from cvae.data.acdc import ACDCError, SubjectInfo, find_subjects, load_subject
from cvae.data.grid import DEFAULT_SIZE, DEFAULT_SPACING
from cvae.data.preprocess import PREPROCESS_VERSION, PreprocessedPair, preprocess_subject
from cvae.io.atomic import atomic_write
from cvae.paths import cache_root

#: Called by ``PairDataset.prepare`` after each subject as ``progress(done, total, subject_id)``.
ProgressCallback = Callable[[int, int, str], None]


def cache_key(root: str | Path, size: Sequence[int], spacing: Sequence[float]) -> str:
    """Short hash of the absolute data root, output size, spacing and ``PREPROCESS_VERSION``."""
    text = "|".join(
        [str(Path(root).expanduser().resolve()), repr(tuple(int(n) for n in size)),
         repr(tuple(float(s) for s in spacing)), PREPROCESS_VERSION]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _source_stamp(info: SubjectInfo) -> np.ndarray:
    """(size, mtime_ns) of every source file, so that a cache entry of changed data is recomputed."""
    paths = [info.directory / "Info.cfg", info.ed_image, info.es_image, info.ed_label, info.es_label]
    stamp = []
    for path in paths:
        stat = path.stat() if path is not None and path.exists() else None
        stamp += [stat.st_size, stat.st_mtime_ns] if stat else [-1, -1]
    return np.asarray(stamp, dtype=np.int64)


def save_pair(path: Path, pair: PreprocessedPair, stamp: np.ndarray) -> None:
    """Write ``pair`` to ``path`` (.npz) atomically: a temporary file in the same folder, then ``os.replace``."""
    arrays = {
        "fixed": pair.fixed, "moving": pair.moving, "affine": pair.affine, "spacing": pair.spacing,
        "original_affine": pair.original_affine, "original_shape": np.asarray(pair.original_shape, dtype=np.int64),
        "intensity_range": np.asarray(pair.intensity_range, dtype=np.float64),
        "subject": np.asarray(pair.subject), "group": np.asarray(pair.group), "stamp": stamp,
    }
    if pair.fixed_label is not None:
        arrays["fixed_label"] = pair.fixed_label
    if pair.moving_label is not None:
        arrays["moving_label"] = pair.moving_label

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a file object: numpy would append ".npz" to the temporary name
            np.savez_compressed(handle, **arrays)

    atomic_write(path, write)


def load_pair(path: Path, stamp: np.ndarray | None = None) -> PreprocessedPair | None:
    """Read a cached pair; ``None`` if the file is missing, unreadable, incomplete or its stamp differs."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if stamp is not None and not np.array_equal(data["stamp"], stamp):
                return None
            return PreprocessedPair(
                fixed=data["fixed"], moving=data["moving"],
                fixed_label=data["fixed_label"] if "fixed_label" in data else None,
                moving_label=data["moving_label"] if "moving_label" in data else None,
                affine=data["affine"], spacing=data["spacing"], original_affine=data["original_affine"],
                original_shape=tuple(int(n) for n in data["original_shape"]),  # type: ignore[arg-type]
                intensity_range=tuple(float(v) for v in data["intensity_range"]),  # type: ignore[arg-type]
                subject=str(data["subject"]), group=str(data["group"]),
            )
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


class PairDataset(Dataset):
    """Preprocessed (fixed = ES, moving = ED) pairs of an ACDC-style tree.

    Item ``i`` is a dict: ``"fixed"``/``"moving"`` float32 tensors (1, X, Y, Z) in [0, 1]; ``"fixed_label"``/
    ``"moving_label"`` int64 (1, X, Y, Z) only when the subject has labels; ``"group"`` int index into ``GROUPS``
    (-1: unknown); ``"subject"`` str. Preprocessing runs once per subject and is cached as
    ``<cache>/<key>/<subject>.npz`` (``key`` from ``cache_key``; ``cache_dir`` defaults to
    ``cvae.paths.cache_root()``); a corrupt or stale entry is recomputed.
    ``subjects`` optionally restricts the dataset to these ids. Bad subjects are skipped with a warning: when their
    ``Info.cfg`` is read here, when files fail in ``prepare``, or when an item fails to load (that item is then
    served by the next good subject).
    """

    def __init__(
        self,
        root: str | Path,
        split: str | None = "training",
        size: Sequence[int] = DEFAULT_SIZE,
        spacing: Sequence[float] = DEFAULT_SPACING,
        cache_dir: str | Path | None = None,
        subjects: Sequence[str] | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        self.size = tuple(int(n) for n in size)
        self.spacing = tuple(float(s) for s in spacing)
        infos = find_subjects(self.root, split, skip_bad=True)
        if subjects is not None:
            unknown = sorted(set(subjects) - {info.subject for info in infos})
            if unknown:
                raise ValueError(f"subjects not found (or bad) under {self.root}: {', '.join(unknown[:5])}")
            infos = [info for info in infos if info.subject in set(subjects)]
        if not infos:
            raise ValueError(f"no usable subjects under {self.root} (split={split!r})")
        self.infos: list[SubjectInfo] = infos
        self._bad: set[str] = set()  # subjects found bad by __getitem__ in this process
        base = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
        self.cache_dir = base / cache_key(self.root, self.size, self.spacing)

    def __len__(self) -> int:
        return len(self.infos)

    @property
    def subjects(self) -> list[str]:
        """Subject ids, in item order."""
        return [info.subject for info in self.infos]

    def cache_path(self, info: SubjectInfo) -> Path:
        """Where the preprocessed pair of ``info`` is cached."""
        return self.cache_dir / f"{info.subject}.npz"

    def _pair_of(self, info: SubjectInfo) -> PreprocessedPair:
        """Cached pair of ``info``, computed and cached on a miss. Raises ``ACDCError``/``ValueError`` for bad data."""
        stamp = _source_stamp(info)
        path = self.cache_path(info)
        pair = load_pair(path, stamp)
        if pair is None:
            pair = preprocess_subject(load_subject(info), self.size, self.spacing)
            save_pair(path, pair, stamp)
        return pair

    def pair(self, index: int) -> PreprocessedPair:
        """The ``PreprocessedPair`` of item ``index`` (with affines, to map results back to the original grid)."""
        return self._pair_of(self.infos[index])

    def is_cached(self, info: SubjectInfo) -> bool:
        """Whether the cache holds a pair of ``info`` made from its current files (reads only the stamp)."""
        try:
            with np.load(self.cache_path(info), allow_pickle=False) as data:
                return bool(np.array_equal(data["stamp"], _source_stamp(info)))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return False

    def _cache(self, info: SubjectInfo) -> str | None:
        """Preprocess and cache ``info`` (if not cached yet); the reason it is unusable, or ``None``."""
        try:
            self._pair_of(info)
            return None
        except ValueError as exc:  # ACDCError is a ValueError
            return str(exc)

    def prepare(self, progress: bool | ProgressCallback = False, workers: int = 1, per_process: int = 8) -> int:
        """Preprocess and cache every subject now, in up to ``workers`` processes; drop bad ones with a warning.
        Returns the number kept (the order of the items stays that of the subject ids). Subjects already cached are
        not read again. A process is started for every ``per_process`` subjects left to preprocess (a new process
        imports the library first, a few seconds), at most ``workers``; with fewer than two, this process does it.

        ``progress``: ``True`` for a tqdm bar, or a ``progress(done, total, subject_id)`` callback.
        """
        todo = [info for info in self.infos if not self.is_cached(info)]
        errors: dict[str, str | None] = dict.fromkeys(self.subjects)
        bar = None
        if progress is True and todo:
            bar = tqdm(total=len(todo), desc="preprocessing", unit="subject")
        processes = min(workers, len(todo) // max(1, per_process))
        if processes > 1:
            pool = ProcessPoolExecutor(processes, mp_context=get_context("spawn"))
            results = pool.map(self._cache, todo)  # in order, as they complete in turn
        else:
            pool, results = None, map(self._cache, todo)
        try:
            for done, (info, error) in enumerate(zip(todo, results), start=1):
                errors[info.subject] = error
                if error is not None:
                    warnings.warn(f"skipping {info.subject}: {error}", stacklevel=2)
                if bar is not None:
                    bar.update(1)
                elif callable(progress):
                    progress(done, len(todo), info.subject)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
            if bar is not None:
                bar.close()
        kept = [info for info in self.infos if errors[info.subject] is None]
        if not kept:
            raise ValueError(f"no usable subjects under {self.root}: every subject failed to load")
        self.infos = kept
        return len(kept)

    def __getitem__(self, index: int) -> dict[str, object]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} subjects")
        index %= len(self)
        for offset in range(len(self)):
            info = self.infos[(index + offset) % len(self)]
            if info.subject in self._bad:
                continue
            try:
                return self._item(self._pair_of(info), info)
            except ValueError as exc:  # ACDCError is a ValueError
                self._bad.add(info.subject)
                warnings.warn(f"skipping {info.subject}: {exc}", stacklevel=2)
        raise ACDCError(f"no usable subjects under {self.root}: all {len(self)} failed to load")

    @staticmethod
    def _item(pair: PreprocessedPair, info: SubjectInfo) -> dict[str, object]:
        item: dict[str, object] = {
            "fixed": torch.from_numpy(np.ascontiguousarray(pair.fixed, dtype=np.float32))[None],
            "moving": torch.from_numpy(np.ascontiguousarray(pair.moving, dtype=np.float32))[None],
        }
        for key, label in (("fixed_label", pair.fixed_label), ("moving_label", pair.moving_label)):
            if label is not None:
                item[key] = torch.from_numpy(label.astype(np.int64))[None]
        item["group"] = info.group_index
        item["subject"] = info.subject
        return item
