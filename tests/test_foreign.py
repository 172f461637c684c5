"""The foreign phantom generator (``cvae.data.foreign``, ``cvae synth --style foreign``): the ACDC layout and native
grids, labels, each group's ACDC definition, the exact ground-truth motion, determinism, the command and the
project's preprocessing. One cohort of five subjects (one per group) is written once for the module."""
from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from conftest import TINY_SIZE, TINY_SPACING, dice_by_hand, nearest_warp
from cvae.cli import main as cvae_main
from cvae.data.acdc import find_subjects, load_subject
from cvae.data.dataset import PairDataset
from cvae.data.foreign import make_foreign_cohort
from cvae.data.labels import GROUPS
from cvae.data.preprocess import displacement_to_crop_grid, preprocess_subject
from cvae.evaluation.clinical import clinical_measures

SEED = 11


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Five test subjects (a block of five: one per group), written by two workers."""
    return make_foreign_cohort(tmp_path_factory.mktemp("foreign") / "cohort", n_train=0, n_test=5, seed=SEED,
                               workers=2)


@pytest.fixture(scope="module")
def subjects(cohort):
    """``(info, subject, displacement (X, Y, Z, 3))`` of every patient, sorted by id."""
    out = []
    for info in find_subjects(cohort):
        displacement = nib.load(info.directory / f"{info.subject}_gt_displacement.nii.gz")
        out.append((info, load_subject(info), displacement))
    return out


def measures(info, subject) -> dict[str, float]:
    return clinical_measures(subject.ed_label, subject.es_label, subject.spacing, info.height, info.weight)


def inward_motion_by_sector(subject, displacement: np.ndarray, sectors: int = 12) -> np.ndarray:
    """Mean in-plane displacement (mm) of the ES myocardium toward the ES cavity's centroid, per angular sector,
    over the slices whose cavity is at least half the largest: the wall's inward motion during systole."""
    es, spacing = subject.es_label, subject.spacing
    areas = (es == 3).sum(axis=(0, 1))
    per_slice = []
    for k in np.flatnonzero(areas >= 0.5 * areas.max()):
        myocardium = np.argwhere(es[:, :, k] == 2)
        offset = (myocardium - np.argwhere(es[:, :, k] == 3).mean(axis=0)) * spacing[:2]
        outward = offset / np.linalg.norm(offset, axis=1, keepdims=True)
        inward = (displacement[myocardium[:, 0], myocardium[:, 1], k, :2] * spacing[:2] * outward).sum(axis=1)
        sector = ((np.arctan2(offset[:, 1], offset[:, 0]) + np.pi) / (2 * np.pi) * sectors).astype(int) % sectors
        per_slice.append(np.bincount(sector, inward, sectors) / np.maximum(np.bincount(sector, None, sectors), 1))
    return np.mean(per_slice, axis=0)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------- layout and grids


def test_the_acdc_layout_is_read_by_the_project_reader(cohort, subjects):
    assert sorted(p.name for p in (cohort / "testing").iterdir()) == [f"patient{n:03d}" for n in range(1, 6)]
    assert not any((cohort / "training").iterdir())
    for info, subject, displacement in subjects:
        assert info.split == "testing" and info.ed_frame == 1 and 1 < info.es_frame <= info.nb_frame
        assert 140 <= info.height <= 200 and 35 <= info.weight <= 140
        lines = (info.directory / "Info.cfg").read_text().splitlines()
        assert [line.split(":")[0] for line in lines] == ["ED", "ES", "Group", "Height", "NbFrame", "Weight"]
        image = nib.load(info.ed_image)
        assert image.get_data_dtype() == np.int16 and nib.load(info.es_label).get_data_dtype() == np.uint8
        assert displacement.get_data_dtype() == np.float32 and displacement.shape == (*subject.ed_image.shape, 3)
        for other in (info.es_image, info.ed_label, info.es_label, displacement):
            other = nib.load(other) if isinstance(other, Path) else other
            np.testing.assert_array_equal(other.affine, image.affine)
        assert abs(np.linalg.det(image.affine[:3, :3])) > 1.0
        assert subject.ed_image.min() >= 0 and subject.ed_image.max() > 100


def test_native_grids_are_acdc_like(subjects):
    for _, subject, _ in subjects:
        nx, ny, nz = subject.ed_image.shape
        sx, sy, sz = subject.spacing
        assert 200 <= nx <= 260 and 200 <= ny <= 260 and 6 <= nz <= 18
        assert 1.3 <= sx <= 1.9 and math.isclose(sx, sy, rel_tol=1e-5) and 5.0 <= sz <= 10.0


def test_labels_hold_every_structure_at_ed_and_es(subjects):
    for _, subject, _ in subjects:
        for label in (subject.ed_label, subject.es_label):
            assert set(np.unique(label)) == {0, 1, 2, 3}
        # the outer slices hold no label (so a warp that clamps at the stack's ends stays right)
        assert not subject.ed_label[:, :, [0, -1]].any()


# --------------------------------------------------------------------------------------------- groups


def test_each_group_meets_its_acdc_definition(subjects):
    assert sorted(info.group for info, _, _ in subjects) == sorted(GROUPS)
    for info, subject, _ in subjects:
        m = measures(info, subject)
        normal_lv = m["LVEF"] > 50 and m["MaxWT"] < 15
        checks = {
            "NOR": m["LVEF"] > 50 and m["MaxWT"] < 12,
            "DCM": m["LVEDVi"] > 100 and m["LVEF"] < 40,
            "HCM": m["LVMi"] > 110 and m["MaxWT"] > 15 and m["LVEF"] > 55,
            "MINF": m["LVEF"] < 40,
            "RV": (m["RVEDVi"] > 100 or m["RVEF"] < 40) and normal_lv,  # 100: the women's threshold (no sex given)
        }
        assert checks[info.group], (info.subject, info.group, m)


def test_myocardial_infarction_has_an_akinetic_territory(subjects):
    """The weakest sector of the MINF wall moves inward less than half as far as its strongest; the other groups
    contract all around."""
    for info, subject, displacement in subjects:
        motion = inward_motion_by_sector(subject, np.asarray(displacement.dataobj))
        ratio = motion.min() / motion.max()
        assert (ratio < 0.5) if info.group == "MINF" else (ratio > 0.55), (info.group, np.round(motion, 1))


def test_volumes_by_counting_voxels(subjects):
    info, subject, _ = next(s for s in subjects if s[0].group == "DCM")
    voxel_ml = float(np.prod(subject.spacing)) / 1000.0
    bsa = math.sqrt(info.height * info.weight / 3600.0)
    by_hand = {
        "LVEDV": np.count_nonzero(subject.ed_label == 3) * voxel_ml,
        "LVESV": np.count_nonzero(subject.es_label == 3) * voxel_ml,
        "RVEDV": np.count_nonzero(subject.ed_label == 1) * voxel_ml,
        "LVM": np.count_nonzero(subject.ed_label == 2) * voxel_ml * 1.05,
    }
    m = measures(info, subject)
    for key, value in by_hand.items():
        assert m[key] == pytest.approx(value, rel=1e-9)
    assert by_hand["LVEDV"] / bsa > 100 and 100 * (1 - by_hand["LVESV"] / by_hand["LVEDV"]) < 40


# --------------------------------------------------------------------------------------------- exact motion


def test_es_labels_are_the_ed_labels_carried_by_the_ground_truth_displacement(subjects):
    for info, subject, displacement in subjects:
        u = np.moveaxis(np.asarray(displacement.dataobj, dtype=np.float64), -1, 0)
        warped = ndimage.map_coordinates(subject.ed_label, np.indices(u.shape[1:]) + u, order=0, mode="nearest")
        heart = (warped > 0) | (subject.es_label > 0)
        assert np.mean(warped[heart] == subject.es_label[heart]) >= 0.97, info.subject
        np.testing.assert_array_equal(nearest_warp(subject.ed_label, u), warped)
        # a real contraction, confined to the heart's neighbourhood: the field is exactly 0 on most of the grid
        assert np.abs(u[:2]).max() > 3 and np.abs(u[2]).max() > 0.3
        assert np.mean(np.all(u == 0, axis=0)) > 0.3


# --------------------------------------------------------------------------------------------- determinism


def test_a_seed_gives_the_same_bytes_with_any_number_of_workers_and_subjects(cohort, tmp_path):
    """The module's cohort was written by two workers and holds five subjects; one worker writing only the first
    gives its very bytes; another seed gives another subject."""
    first = {name: data for name, data in tree_bytes(cohort).items() if name.startswith("testing/patient001/")}
    assert tree_bytes(make_foreign_cohort(tmp_path / "again", n_train=0, n_test=1, seed=SEED, workers=1)) == first
    assert len(first) == 6
    other = tree_bytes(make_foreign_cohort(tmp_path / "other", n_train=0, n_test=1, seed=SEED + 1, workers=1))
    name = "testing/patient001/patient001_frame01.nii.gz"
    assert other[name] != first[name]


# --------------------------------------------------------------------------------------------- the command


def test_the_command_writes_a_foreign_cohort_and_refuses_bad_arguments(tmp_path, capsys):
    out = tmp_path / "cli"
    assert cvae_main(["synth", "--style", "foreign", "--out", str(out), "--n-train", "1", "--n-test", "0",
                      "--seed", "4", "--workers", "1"]) == 0
    assert "foreign" in capsys.readouterr().out
    assert (out / "training" / "patient001" / "patient001_gt_displacement.nii.gz").is_file()
    assert not any((out / "testing").iterdir())
    for bad in (["--n-test", "-1"], ["--workers", "0"], ["--seed", "-2"]):
        assert cvae_main(["synth", "--style", "foreign", "--out", str(tmp_path / "bad"), "--n-train", "0", *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("cvae synth: error:") and "\n" not in err, err
    assert not (tmp_path / "bad").exists()


# --------------------------------------------------------------------------------------------- preprocessing


def test_the_project_preprocessing_accepts_it(cohort, subjects, tmp_path):
    dataset = PairDataset(cohort, "testing", size=TINY_SIZE, spacing=TINY_SPACING, cache_dir=tmp_path / "cache")
    assert len(dataset) == 5
    item = dataset[0]
    assert tuple(item["fixed"].shape) == (1, *TINY_SIZE) and 0.0 <= float(item["moving"].min())
    assert float(item["fixed"].max()) <= 1.0 and set(np.unique(item["fixed_label"].numpy())) == {0, 1, 2, 3}
    # on the model's grid the exact transform still carries the ED labels onto the ES labels
    info, subject, displacement = next(s for s in subjects if s[0].group == "NOR")
    pair = preprocess_subject(subject)
    u = displacement_to_crop_grid(np.asarray(displacement.dataobj), pair)
    carried = nearest_warp(pair.moving_label, u)
    for label in (1, 2, 3):
        before = dice_by_hand(pair.moving_label == label, pair.fixed_label == label)
        after = dice_by_hand(carried == label, pair.fixed_label == label)
        assert after > 0.85 and after > before, (label, before, after)
