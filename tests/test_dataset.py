"""PairDataset: items, on-disk cache (hits, corrupt and stale entries), bad subjects, DataLoader + augmentation."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import cvae.data.dataset as dataset_module
from cvae.data.augment import AugmentParams, augment_batch
from cvae.data.dataset import PairDataset, cache_key
from cvae.data.labels import GROUPS
from cvae.paths import cache_root

from conftest import truncate_es_frame, write_patient

SIZE = (24, 24, 8)
SPACING = (2.0, 2.0, 6.0)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Three training subjects (patient003 without labels) and one test subject."""
    root = tmp_path / "acdc"
    write_patient(root / "training", 1, group="DCM", seed=1)
    write_patient(root / "training", 2, group="HCM", seed=2)
    write_patient(root / "training", 3, group="NOR", labels=False, seed=3)
    write_patient(root / "testing", 101, group="RV", seed=4)
    return root


def make(root: Path, tmp_path: Path, **kwargs) -> PairDataset:
    return PairDataset(root, size=SIZE, spacing=SPACING, cache_dir=tmp_path / "cache", **kwargs)


def test_items_and_cache_files(root: Path, tmp_path: Path) -> None:
    data = make(root, tmp_path)
    assert len(data) == 3 and data.subjects == ["patient001", "patient002", "patient003"]
    item = data[0]
    assert item["subject"] == "patient001" and item["group"] == GROUPS.index("DCM")
    for key in ("fixed", "moving"):
        assert item[key].shape == (1, *SIZE) and item[key].dtype == torch.float32
        assert 0 <= item[key].min() and item[key].max() <= 1 and item[key].max() > 0.5
    for key in ("fixed_label", "moving_label"):
        assert item[key].shape == (1, *SIZE) and item[key].dtype == torch.int64
        assert set(item[key].unique().tolist()) == {0, 1, 2, 3}
    # fixed = ES (smaller LV cavity in the test phantoms), moving = ED.
    assert (item["fixed_label"] == 3).sum() < (item["moving_label"] == 3).sum()
    unlabelled = data[2]
    assert "fixed_label" not in unlabelled and "moving_label" not in unlabelled and unlabelled["group"] == 0
    assert sorted(p.name for p in data.cache_dir.glob("*.npz")) == ["patient001.npz", "patient003.npz"]
    assert data.cache_dir.parent == tmp_path / "cache" and not list(data.cache_dir.glob("*.tmp"))
    pair = data.pair(0)
    np.testing.assert_allclose(np.linalg.norm(pair.affine[:3, :3], axis=0), SPACING)
    assert make(root, tmp_path, split="testing").subjects == ["patient101"]
    assert make(root, tmp_path, subjects=["patient002"]).subjects == ["patient002"]
    with pytest.raises(ValueError, match="patient077"):
        make(root, tmp_path, subjects=["patient077"])
    with pytest.raises(IndexError):
        data[3]


def test_cache_hit_skips_preprocessing(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = make(root, tmp_path)
    assert first.prepare() == 3
    expected = first[1]

    def fail(*args, **kwargs):
        raise AssertionError("preprocessing ran despite a valid cache")

    monkeypatch.setattr(dataset_module, "preprocess_subject", fail)
    monkeypatch.setattr(dataset_module, "ProcessPoolExecutor", fail)  # nothing left to do: no process started
    cached = make(root, tmp_path)
    assert all(cached.is_cached(info) for info in cached.infos) and cached.prepare(workers=4) == 3
    again = make(root, tmp_path)[1]
    for key in ("fixed", "moving", "fixed_label", "moving_label"):
        assert torch.equal(again[key], expected[key])


def test_corrupt_and_stale_cache_are_recomputed(root: Path, tmp_path: Path) -> None:
    data = make(root, tmp_path)
    expected = data[0]
    path = data.cache_path(data.infos[0])
    path.write_bytes(b"garbage, not a zip")
    assert torch.equal(data[0]["fixed"], expected["fixed"])
    assert path.stat().st_size > 1000
    # Change the source data: the cached entry no longer matches and the new image is used.
    info = data.infos[0]
    img = nib.load(str(info.es_image))
    flipped = np.ascontiguousarray(img.get_fdata()[::-1]).astype(np.float32)
    nib.save(nib.Nifti1Image(flipped, img.affine), str(info.es_image))
    os.utime(info.es_image, ns=(1, 1))  # a different mtime even on coarse file systems
    assert not torch.equal(data[0]["fixed"], expected["fixed"])


def test_cache_location_key(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CVAE_CACHE", str(tmp_path / "env-cache"))
    assert cache_root() == tmp_path / "env-cache"
    data = PairDataset(root, size=SIZE, spacing=SPACING)
    assert data.cache_dir == tmp_path / "env-cache" / cache_key(root, SIZE, SPACING)
    assert cache_key(root, SIZE, SPACING) != cache_key(root, (24, 24, 16), SPACING)
    assert cache_key(root, SIZE, SPACING) != cache_key(root, SIZE, (2.0, 2.0, 5.0))
    assert cache_key(root, SIZE, SPACING) != cache_key(tmp_path, SIZE, SPACING)
    monkeypatch.delenv("CVAE_CACHE")
    assert cache_root() == Path.home() / ".cache" / "cvae-reg"


def test_bad_subjects_are_skipped_with_warning(root: Path, tmp_path: Path) -> None:
    truncate_es_frame(write_patient(root / "training", 5, ed=1, es=9))
    (root / "training" / "patient002" / "Info.cfg").write_text("ED: 1\nES: 9\nGroup: nope\n")
    with pytest.warns(UserWarning, match="patient002.*unknown group"):
        data = make(root, tmp_path)
    assert data.subjects == ["patient001", "patient003", "patient005"]
    # Lazily: the bad item is served by the next good subject, with a warning naming the bad one.
    with pytest.warns(UserWarning, match="patient005.*corrupt"):
        assert data[2]["subject"] == "patient001"
    calls = []
    with pytest.warns(UserWarning, match="patient002"):
        prepared = make(root, tmp_path)
    todo = [info.subject for info in prepared.infos if not prepared.is_cached(info)]
    assert todo[-1] == "patient005" and "patient001" not in todo  # patient001 was read (and cached) above
    with pytest.warns(UserWarning, match="patient005"):
        kept = prepared.prepare(progress=lambda done, total, name: calls.append((done, total, name)))
    assert kept == 2 and prepared.subjects == ["patient001", "patient003"]
    assert calls == [(k, len(todo), name) for k, name in enumerate(todo, start=1)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [prepared[i]["subject"] for i in range(len(prepared))] == ["patient001", "patient003"]


def test_dataloader_batches_and_augmentation(root: Path, tmp_path: Path) -> None:
    data = make(root, tmp_path, subjects=["patient001", "patient002"])
    batch = next(iter(DataLoader(data, batch_size=2, shuffle=False)))
    assert batch["fixed"].shape == (2, 1, *SIZE) and batch["moving_label"].shape == (2, 1, *SIZE)
    assert batch["subject"] == ["patient001", "patient002"]
    assert batch["group"].tolist() == [GROUPS.index("DCM"), GROUPS.index("HCM")]
    out = augment_batch(batch, AugmentParams(), torch.Generator().manual_seed(0), spacing=SPACING)
    assert out["fixed"].shape == batch["fixed"].shape and set(out["fixed_label"].unique().tolist()) <= {0, 1, 2, 3}
