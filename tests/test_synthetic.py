"""Synthetic ACDC-like cohort: layout, determinism, data ranges, exact ground-truth motion and group definitions."""
from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from cvae.data.acdc import read_info_cfg
from cvae.data.labels import GROUPS, LV_CAVITY, LV_MYOCARDIUM, RV_CAVITY
from cvae.commands.synth import main
from cvae.data.synthetic import ed_labels_at, group_of, make_cohort, make_subject
from cvae.data.synthetic_anatomy import ed_scene
from cvae.data.synthetic_motion import es_to_ed
from cvae.evaluation.clinical import clinical_measures

N_TRAIN, N_TEST, SEED = 3, 2, 7


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return make_cohort(tmp_path_factory.mktemp("synth") / "cohort", n_train=N_TRAIN, n_test=N_TEST, seed=SEED,
                       workers=2)


@pytest.fixture(scope="module")
def subjects():
    """The first ten training subjects of seed 0: two of each group."""
    return [make_subject("training", k, seed=0) for k in range(10)]


def patient_dirs(root: Path, split: str) -> list[Path]:
    return sorted(p for p in (root / split).iterdir() if p.is_dir())


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


# --------------------------------------------------------------------------------------------- layout and files


def test_acdc_layout_names_and_info(cohort):
    train, test = patient_dirs(cohort, "training"), patient_dirs(cohort, "testing")
    assert [p.name for p in train] == ["patient001", "patient002", "patient003"]
    assert [p.name for p in test] == ["patient004", "patient005"]  # testing numbering continues after training
    for folder in train + test:
        info = read_info_cfg(folder / "Info.cfg")
        assert list(info) == ["ED", "ES", "Group", "Height", "NbFrame", "Weight"]
        assert info["ED"] == 1 and 12 <= info["NbFrame"] <= 35 and 1 < info["ES"] < info["NbFrame"]
        assert info["Group"] in GROUPS
        assert 140 <= info["Height"] <= 200 and 35 <= info["Weight"] <= 150
        text = (folder / "Info.cfg").read_text()
        assert f"Height: {info['Height']:.1f}\n" in text and text.startswith("ED: 1\nES: ")
        stem = folder.name
        expected = {"Info.cfg", f"{stem}_frame01.nii.gz", f"{stem}_frame01_gt.nii.gz",
                    f"{stem}_frame{info['ES']:02d}.nii.gz", f"{stem}_frame{info['ES']:02d}_gt.nii.gz",
                    f"{stem}_gt_displacement.nii.gz"}
        assert {p.name for p in folder.iterdir()} == expected  # no cine without --cine


def test_dtypes_shapes_spacings_and_labels(cohort):
    for folder in patient_dirs(cohort, "training") + patient_dirs(cohort, "testing"):
        es = read_info_cfg(folder / "Info.cfg")["ES"]
        stem = folder.name
        ed_img = nib.load(folder / f"{stem}_frame01.nii.gz")
        nx, ny, nz = ed_img.shape
        assert 216 <= nx <= 256 and 216 <= ny <= 256 and 6 <= nz <= 18
        sx, sy, sz = ed_img.header.get_zooms()
        assert sx == pytest.approx(sy) and 1.37 <= sx <= 1.68 and 5.0 <= sz <= 10.0
        for name, dtype in ((f"{stem}_frame01.nii.gz", np.int16), (f"{stem}_frame{es:02d}.nii.gz", np.int16),
                            (f"{stem}_frame01_gt.nii.gz", np.uint8), (f"{stem}_frame{es:02d}_gt.nii.gz", np.uint8),
                            (f"{stem}_gt_displacement.nii.gz", np.float32)):
            img = nib.load(folder / name)
            assert img.get_data_dtype() == dtype, name
            assert img.shape[:3] == (nx, ny, nz) and np.allclose(img.affine, ed_img.affine), name
        for name in (f"{stem}_frame01_gt.nii.gz", f"{stem}_frame{es:02d}_gt.nii.gz"):
            label = np.asarray(nib.load(folder / name).dataobj)
            assert set(np.unique(label)) == {0, 1, 2, 3}, name
        image = np.asarray(ed_img.dataobj)
        assert image.min() >= 0 and image.max() > 200
        assert nib.load(folder / f"{stem}_gt_displacement.nii.gz").shape == (nx, ny, nz, 3)


def test_groups_come_in_shuffled_blocks_of_five():
    for split in ("training", "testing"):
        blocks = [tuple(group_of(split, 5 * b + i, seed=3) for i in range(5)) for b in range(12)]
        assert all(sorted(block) == sorted(GROUPS) for block in blocks)
        assert len(set(blocks)) > 3  # the order is shuffled per block
    assert [group_of("training", k, 3) for k in range(20)] != [group_of("testing", k, 3) for k in range(20)]


# --------------------------------------------------------------------------------------------- determinism


def test_same_seed_gives_byte_identical_files(cohort, tmp_path):
    again = make_cohort(tmp_path / "again", n_train=2, n_test=0, seed=SEED, workers=1)
    for folder in patient_dirs(again, "training"):
        for path in folder.iterdir():
            assert path.read_bytes() == (cohort / "training" / folder.name / path.name).read_bytes(), path.name


def test_different_seed_gives_different_subjects(subjects):
    other, first = make_subject("training", 0, seed=1), subjects[0]
    assert other.ed_image.shape != first.ed_image.shape or not np.array_equal(other.ed_image, first.ed_image)
    assert other.params.targets != first.params.targets


def test_subject_does_not_depend_on_cohort_size(cohort, tmp_path):
    # testing subject 0 is patient004 after 3 training subjects and patient002 after 1: same bytes.
    small = make_cohort(tmp_path / "small", n_train=1, n_test=1, seed=SEED, workers=1)
    for path in (small / "testing" / "patient002").iterdir():
        twin = cohort / "testing" / "patient004" / path.name.replace("patient002", "patient004")
        assert path.read_bytes() == twin.read_bytes(), path.name
    # training and testing subject 0 come from disjoint seed streams
    train0 = (cohort / "training" / "patient001" / "patient001_frame01.nii.gz").read_bytes()
    assert train0 != (cohort / "testing" / "patient004" / "patient004_frame01.nii.gz").read_bytes()


# --------------------------------------------------------------------------------------------- ground-truth motion


def test_displacement_is_exact_for_the_continuous_anatomy(subjects):
    for s in subjects[:5]:
        grid = np.indices(s.es_label.shape, dtype=np.float64)
        warped = ed_labels_at(s.params, grid + np.moveaxis(s.displacement, -1, 0))
        assert (warped == s.es_label).mean() > 0.9999


def test_warping_ed_labels_reproduces_es_labels(subjects):
    """Order-0 warp of the discrete ED labels by the saved field vs the ES labels (LV cavity and myocardium).

    Nearest-neighbour lookup costs Dice on thin walls (in-plane rounding) and at the moving base and apex (nearest
    slice 5-10 mm away): mid-ventricular slices agree to Dice 0.93-0.96 on average, the whole volume to about 0.9,
    far above the unregistered ED-vs-ES overlap. (The field itself is exact: see the test above.)
    """
    mid_dice, gains = {LV_CAVITY: [], LV_MYOCARDIUM: []}, []
    for s in subjects:
        grid = np.indices(s.ed_label.shape, dtype=np.float64)
        warped = ndimage.map_coordinates(s.ed_label, grid + np.moveaxis(s.displacement, -1, 0), order=0)
        lv_slices = np.flatnonzero((s.es_label == LV_CAVITY).any(axis=(0, 1)))
        mid = slice(lv_slices[0] + 1, lv_slices[-1])
        for value in (LV_CAVITY, LV_MYOCARDIUM):
            mid_dice[value].append(dice(warped[:, :, mid] == value, s.es_label[:, :, mid] == value))
            whole, before = dice(warped == value, s.es_label == value), dice(s.ed_label == value, s.es_label == value)
            assert whole > 0.75 and whole > before, (s.group, value)
            gains.append(whole - before)
    for value, values in mid_dice.items():
        assert min(values) > 0.85 and np.mean(values) > 0.92, (value, values)
    assert np.mean(gains) > 0.2


def test_motion_is_invertible(subjects):
    for s in subjects:
        u = s.displacement
        jac = np.stack([np.stack(np.gradient(u[..., i]), axis=-1) for i in range(3)], axis=-2) + np.eye(3)
        assert np.linalg.det(jac).min() > 0, s.group


def test_myocardium_keeps_its_volume_from_ed_to_es(subjects):
    """Count myocardium on a 1.25 mm grid of the continuous anatomy at ED and at ES (ED scene pulled back by phi)."""
    for s in subjects[:4]:
        p = s.params
        side = np.arange(-p.reach, p.reach, 1.25, dtype=np.float32)
        z = np.arange(-p.heart.c_epi - 5.0, 5.0, 1.25, dtype=np.float32)
        x, y, z = side[:, None, None], side[None, :, None], z[None, None, :]
        ed = ed_scene(x, y, z, p.heart, p.body, p.reach)[1] == LV_MYOCARDIUM
        es = ed_scene(*es_to_ed(x, y, z, p.heart, p.motion, 1.0, *p.taper), p.heart, p.body, p.reach)[1]
        assert (es == LV_MYOCARDIUM).sum() == pytest.approx(ed.sum(), rel=0.02), s.group


def test_unregistered_frames_differ(subjects):
    normals = [s for s in subjects if s.group == "NOR"]
    for s in normals:
        assert dice(s.ed_label == LV_CAVITY, s.es_label == LV_CAVITY) < 0.75
        assert dice(s.ed_label == RV_CAVITY, s.es_label == RV_CAVITY) < 0.8


# --------------------------------------------------------------------------------------------- group definitions


def meets_definition(group: str, m: dict[str, float]) -> bool:
    """ACDC definitions (RV threshold 110 mL/m^2 for men, 100 for women; NOR kept below both)."""
    return {
        "NOR": m["LVEF"] > 50 and m["MaxWT"] < 12 and m["RVEDVi"] < 100 and m["RVEF"] > 40,
        "DCM": m["LVEDVi"] > 100 and m["LVEF"] < 40,
        "HCM": m["LVMi"] > 110 and m["MaxWT"] > 15 and m["LVEF"] > 55,
        "MINF": m["LVEF"] < 40,
        "RV": (m["RVEDVi"] > 110 or m["RVEF"] < 40) and m["LVEF"] > 50,
    }[group]


def check_cohort_definitions(subjects) -> None:
    measures = {g: [] for g in GROUPS}
    for s in subjects:
        p = s.params
        measures[s.group].append(clinical_measures(s.ed_label, s.es_label, s.spacing, p.height_cm, p.weight_kg))
    passed = sum(meets_definition(g, m) for g, ms in measures.items() for m in ms)
    assert passed >= math.ceil(0.95 * len(subjects)), f"{passed}/{len(subjects)} meet their group definition"

    def mean(group: str, key: str) -> float:
        return float(np.mean([m[key] for m in measures[group]]))

    assert mean("NOR", "LVEF") > mean("DCM", "LVEF") + 20 and mean("NOR", "LVEF") > mean("MINF", "LVEF") + 20
    assert mean("HCM", "MaxWT") > mean("NOR", "MaxWT") + 5 and mean("HCM", "LVMi") > mean("NOR", "LVMi") + 40
    assert mean("DCM", "LVEDVi") > mean("NOR", "LVEDVi") + 30
    assert mean("RV", "RVEDVi") > mean("NOR", "RVEDVi") + 40 and mean("RV", "RVEF") < mean("NOR", "RVEF") - 15


def test_ten_subjects_meet_their_group_definitions(subjects):
    assert sorted(s.group for s in subjects) == sorted(GROUPS * 2)
    check_cohort_definitions(subjects)


@pytest.mark.slow
def test_fifty_subjects_meet_their_group_definitions():
    check_cohort_definitions([make_subject("training", k, seed=11) for k in range(50)])


@pytest.mark.slow
def test_cine_frames_match_ed_and_es():
    plain, movie = make_subject("testing", 3, seed=1), make_subject("testing", 3, seed=1, cine=True)
    assert movie.cine.shape == (*plain.ed_image.shape, plain.params.nb_frame) and movie.cine.dtype == np.int16
    assert np.array_equal(movie.cine[..., 0], plain.ed_image)
    assert np.array_equal(movie.cine[..., plain.params.es_frame - 1], plain.es_image)


# --------------------------------------------------------------------------------------------- bad input


def test_bad_arguments_raise_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="n_train"):
        make_cohort(tmp_path, n_train=-1)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        make_cohort(a_file, n_train=1, n_test=0)
    with pytest.raises(ValueError, match="split"):
        make_subject("validation", 0)
    with pytest.raises(ValueError, match="seed"):
        make_subject("training", 0, seed=-3)


def test_cli_exit_codes(tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert main(["--out", str(a_file), "--n-train", "1", "--n-test", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cvae synth: error:") and "\n" not in err
    assert main(["--out", str(tmp_path / "ok"), "--n-train", "1", "--n-test", "0", "--workers", "1"]) == 0
    assert (tmp_path / "ok" / "training" / "patient001" / "Info.cfg").exists()
    assert not any((tmp_path / "ok" / "testing").iterdir())


def test_cli_refuses_an_out_it_cannot_write_before_making_a_subject(tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert main(["--out", str(a_file / "cohort"), "--n-train", "1", "--n-test", "0", "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"cvae synth: error: --out {a_file / 'cohort'}: {a_file} is a file")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("cvae.io.atomic.tempfile.mkstemp", denied)
    assert main(["--out", str(tmp_path / "cohort"), "--n-train", "1", "--n-test", "0", "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot write in {tmp_path} (Permission denied)" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]  # nothing made


def test_one_split_alone_is_that_split_of_the_whole_cohort(cohort, tmp_path, capsys):
    """`cvae synth --splits testing` (what `make app` writes first): the same files as in the whole cohort, under
    the same names, and no training subject; then `--splits training` completes it."""
    out = tmp_path / "cohort"
    argv = ["--out", str(out), "--n-train", str(N_TRAIN), "--n-test", str(N_TEST), "--seed", str(SEED),
            "--no-progress"]
    assert main([*argv, "--splits", "testing"]) == 0
    assert "wrote 2 testing subjects" in capsys.readouterr().out
    assert not (out / "training").exists()
    assert main([*argv, "--splits", "training", "--workers", "1"]) == 0
    for split in ("training", "testing"):
        ours = sorted(p.relative_to(out) for p in (out / split).rglob("*") if p.is_file())
        theirs = sorted(p.relative_to(cohort) for p in (cohort / split).rglob("*") if p.is_file())
        assert ours == theirs and ours
        assert all((out / p).read_bytes() == (cohort / p).read_bytes() for p in ours), split
    with pytest.raises(ValueError, match="splits must be some of training, testing"):
        make_cohort(tmp_path / "none", n_train=1, n_test=1, splits=())
