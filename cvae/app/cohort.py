"""The app's cohort: where it is, what it holds, and the synthetic demo cohort written on a first start."""
from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from cvae.app.checkpoints import file_stamp
from cvae.data.acdc import ACDCError, find_subjects
from cvae.data.synthetic import make_cohort
from cvae.io.atomic import atomic_folder
from cvae.paths import data_root

__all__ = ["DEMO_COHORT", "cohort_root", "is_default_cohort", "cohort_missing", "create_demo_cohort",
           "list_subjects", "tree_stamp", "study_split"]

#: The demo cohort written on first start when the default cohort folder is missing (``make cohort`` writes the
#: full 234 + 100 subjects instead): 10 test subjects per group, enough for the 10-fold classification.
DEMO_COHORT: dict[str, int] = {"n_train": 0, "n_test": 50, "seed": 0}
_COHORT_LOCK = threading.Lock()


def cohort_root() -> Path:
    """The cohort folder of the app: :func:`cvae.paths.data_root` (``$CVAE_DATA`` or the synthetic demo)."""
    return data_root()


def is_default_cohort(root: Path) -> bool:
    """Whether ``root`` is the synthetic demo cohort's default place (the app may create it)."""
    return not os.environ.get("CVAE_DATA") and root == data_root()


def cohort_missing(root: Path) -> bool:
    """True when ``root`` holds no patient folder (missing or empty)."""
    try:
        find_subjects(root, None, skip_bad=True)
    except ACDCError:
        return True
    return False


def create_demo_cohort(root: Path, progress: Callable[[int, int], None] | None = None) -> Path:
    """Write the synthetic demo cohort (:data:`DEMO_COHORT`) to ``root`` atomically (an interrupted start leaves
    no half cohort); only one session of the server writes it. ``root`` must be missing or an empty folder."""
    with _COHORT_LOCK:
        if not cohort_missing(root):
            return root
        if root.is_dir() and any(root.iterdir()):
            raise ValueError(f"{root} holds files but no patient folder: move them away, or set CVAE_DATA to an "
                             "ACDC-style cohort")
        return atomic_folder(root, lambda tmp: make_cohort(tmp, workers=min(2, os.cpu_count() or 1),
                                                           progress=progress, **DEMO_COHORT))


def list_subjects(root: Path) -> pd.DataFrame:
    """One row per patient folder: ``subject, split, group, height (cm), weight (kg), labels`` (both ED/ES
    segmentations present). ``ACDCError`` (one line) when the folder is missing or holds no patient."""
    infos = find_subjects(root, None, skip_bad=True)
    return pd.DataFrame([{"subject": i.subject, "split": i.split, "group": i.group, "height": i.height,
                          "weight": i.weight, "labels": i.ed_label is not None and i.es_label is not None}
                         for i in infos])


def tree_stamp(root: Path) -> tuple[tuple[int, int], ...]:
    """Stamps of the cohort's folders: part of a cache key, so that added or removed subjects are seen."""
    return tuple(file_stamp(p) for p in (root, root / "training", root / "testing", root / "database"))


def study_split(subjects: pd.DataFrame) -> str | None:
    """The split the pages study (codes the model did not train on): ``"testing"`` when the cohort table of
    :func:`list_subjects` has test subjects, else ``None`` (every subject)."""
    return "testing" if (subjects["split"] == "testing").any() else None
