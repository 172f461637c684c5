"""ACDC reader on hand-made miniature trees: layouts, stray files, missing labels and broken files."""
from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cvae.data.acdc import find_subjects, load_cohort, load_subject, patient_directories, read_info_cfg
from cvae.data.volumes import MAX_VOXELS, ACDCError, load_label, load_nifti, max_voxels

from conftest import (
    ACDC_SHAPE,
    ACDC_SPACING,
    acdc_affine,
    heart_label,
    malformed_nifti,
    as_cine_only,
    one_line_error,
    save_nifti,
    truncate_es_frame,
    write_patient,
)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """``root/training/{patient001, patient002 (no _gt)}`` + stray ``training/patient001.Info.cfg`` FILE +
    ``root/testing/patient101``."""
    root = tmp_path / "acdc"
    write_patient(root / "training", 1, group="DCM", ed=1, es=12)
    write_patient(root / "training", 2, group="RV", ed=2, es=10, labels=False)
    (root / "training" / "patient001.Info.cfg").write_text("ED: 1\nES: 12\nGroup: DCM\n")
    write_patient(root / "testing", 101, group="MINF", ed=1, es=8)
    return root


def test_finds_subjects_in_split_layout_ignoring_stray_file(tree: Path) -> None:
    infos = find_subjects(tree)
    assert [i.subject for i in infos] == ["patient001", "patient002", "patient101"]
    assert [i.split for i in infos] == ["training", "training", "testing"]
    p1, p2, p101 = infos
    assert (p1.group, p1.ed_frame, p1.es_frame, p1.group_index) == ("DCM", 1, 12, 1)
    assert (p1.height, p1.weight, p1.nb_frame) == (180.0, 80.0, 30)
    assert p1.ed_image.name == "patient001_frame01.nii.gz" and p1.es_label.name == "patient001_frame12_gt.nii.gz"
    assert p2.ed_image.name == "patient002_frame02.nii.gz"
    assert p2.ed_label is None and p2.es_label is None
    assert p101.group == "MINF"
    assert [i.subject for i in find_subjects(tree, split="testing")] == ["patient101"]
    assert [i.subject for i in find_subjects(tree, split="training")] == ["patient001", "patient002"]


def test_database_layout_and_direct_layouts(tmp_path: Path) -> None:
    root = tmp_path / "zip"
    write_patient(root / "database" / "testing", 120, group="HCM")
    write_patient(root / "database" / "training", 7)
    found = [(i.subject, i.split) for i in find_subjects(root)]
    assert found == [("patient007", "training"), ("patient120", "testing")]
    # A split folder itself, and a folder holding patient folders directly.
    assert [(i.subject, i.split) for i in find_subjects(root / "database" / "testing")] == [("patient120", "testing")]
    flat = tmp_path / "flat"
    write_patient(flat, 3)
    assert [(i.subject, i.split) for i in find_subjects(flat)] == [("patient003", "")]


def test_missing_root_empty_tree_and_bad_split(tmp_path: Path) -> None:
    with pytest.raises(ACDCError, match="not found"):
        find_subjects(tmp_path / "nowhere")
    (tmp_path / "empty" / "training").mkdir(parents=True)
    with pytest.raises(ACDCError, match="no .*patient folders"):
        find_subjects(tmp_path / "empty")
    with pytest.raises(ACDCError, match="unknown split"):
        patient_directories(tmp_path, split="validation")


def test_load_subject_values_and_missing_labels(tree: Path) -> None:
    p1, p2, _ = find_subjects(tree)
    subject = load_subject(p1)
    assert subject.ed_image.dtype == np.float32 and subject.ed_image.shape == ACDC_SHAPE
    assert subject.ed_label.dtype == np.uint8
    np.testing.assert_array_equal(subject.ed_label, heart_label(radius=5.0))
    np.testing.assert_array_equal(subject.es_label, heart_label(radius=3.5))
    written = nib.load(str(p1.es_image)).get_fdata()
    np.testing.assert_allclose(subject.es_image, written, rtol=1e-6)
    np.testing.assert_allclose(subject.affine, acdc_affine())
    np.testing.assert_allclose(subject.spacing, ACDC_SPACING, rtol=1e-6)
    unlabelled = load_subject(p2)
    assert unlabelled.ed_label is None and unlabelled.es_label is None and unlabelled.es_image.shape == ACDC_SHAPE


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ED: 1\nES 12\nGroup: NOR\n", r"line 2 is not 'Key: value'"),
        ("ED: 1\nES: 12\nGroup: XYZ\n", r"unknown group 'XYZ'"),
        ("ED: 1\nGroup: NOR\n", r"missing 'ES:'"),
        ("ED: one\nES: 12\nGroup: NOR\n", r"ED must be an integer"),
        ("ED: 0\nES: 12\nGroup: NOR\n", r"ED frame must be >= 1"),
    ],
)
def test_read_info_cfg_errors_name_the_file(tmp_path: Path, text: str, message: str) -> None:
    cfg = tmp_path / "patient042" / "Info.cfg"
    cfg.parent.mkdir()
    cfg.write_text(text)
    with pytest.raises(ACDCError, match=message) as err:
        read_info_cfg(cfg)
    assert str(cfg) in str(err.value) and "\n" not in str(err.value)


def test_frames_come_from_the_cine_when_the_frame_files_are_absent(tmp_path: Path) -> None:
    """A user's folder with only ``patientNNN_4d.nii.gz`` and an Info.cfg without Group: ED and ES are read from the
    cine (only those frames), the group is unknown; a frame the cine does not have is a one-line error."""
    folder = write_patient(tmp_path / "mine" / "training", 7, ed=2, es=6, labels=False)
    with_files = load_subject(find_subjects(tmp_path / "mine")[0])
    cine = as_cine_only(folder, frames=9)
    info = find_subjects(tmp_path / "mine")[0]
    assert info.frames_from_cine and info.ed_image == info.es_image == folder / "patient007_4d.nii.gz"
    assert info.group == "" and info.group_index == -1 and info.ed_label is None
    subject = load_subject(info)
    assert np.array_equal(subject.ed_image, cine[..., 1]) and np.array_equal(subject.es_image, cine[..., 5])
    assert np.array_equal(subject.ed_image, with_files.ed_image) and np.array_equal(subject.affine, with_files.affine)
    (folder / "Info.cfg").write_text("ED: 2\nES: 10\n")
    message = one_line_error(ACDCError, lambda: load_subject(find_subjects(tmp_path / "mine")[0]))
    assert "patient007_4d.nii.gz" in message and "frame 10" in message and "frames 1-9" in message


def test_read_info_cfg_types(tmp_path: Path) -> None:
    cfg = tmp_path / "Info.cfg"
    cfg.write_text("ED: 1\nES: 12\n\nGroup: HCM\nHeight: 184.5\nNbFrame: 30\nWeight: 95.0\nExtra: thing\n")
    assert read_info_cfg(cfg) == {
        "ED": 1, "ES": 12, "Group": "HCM", "Height": 184.5, "NbFrame": 30, "Weight": 95.0, "Extra": "thing"
    }


def _break_shape(directory: Path) -> Path:
    path = directory / "patient005_frame01_gt.nii.gz"
    save_nifti(path, np.zeros((ACDC_SHAPE[0], ACDC_SHAPE[1], ACDC_SHAPE[2] + 1), np.uint8))
    return path


def _break_label_values(directory: Path) -> Path:
    path = directory / "patient005_frame09_gt.nii.gz"
    label = heart_label()
    label[0, 0, 0] = 7
    save_nifti(path, label)
    return path


def _break_missing_frame(directory: Path) -> Path:
    path = directory / "patient005_frame01.nii.gz"
    path.unlink()
    return path


def _break_nan(directory: Path) -> Path:
    path = directory / "patient005_frame01.nii.gz"
    image = np.ones(ACDC_SHAPE, np.float32)
    image[3, 4, 2] = np.nan
    save_nifti(path, image)
    return path


def _break_not_gzip(directory: Path) -> Path:
    path = directory / "patient005_frame01.nii.gz"
    path.write_bytes(b"this is not a NIfTI file at all")
    return path


@pytest.mark.parametrize(
    ("breaker", "message"),
    [
        (truncate_es_frame, "corrupt"),
        (_break_not_gzip, "corrupt"),
        (_break_shape, "does not match"),
        (_break_label_values, r"label values must be in \{0,1,2,3\}, found \[7.0\]"),
        (_break_missing_frame, "file not found"),
        (_break_nan, "NaN"),
    ],
)
def test_broken_files_raise_naming_the_file(tmp_path: Path, breaker, message: str) -> None:
    directory = write_patient(tmp_path / "training", 5, ed=1, es=9)
    bad_path = breaker(directory)
    (info,) = find_subjects(tmp_path)
    with pytest.raises(ACDCError, match=message) as err:
        load_subject(info)
    assert bad_path.name in str(err.value)


def test_load_cohort_skips_bad_subjects_with_warning(tree: Path) -> None:
    (tree / "training" / "patient002" / "Info.cfg").write_text("ED: 2\nES: 10\nGroup: ABC\n")
    truncate_es_frame(write_patient(tree / "training", 5, ed=1, es=9))
    with pytest.warns(UserWarning) as record:
        subjects = list(load_cohort(tree))
    assert [s.info.subject for s in subjects] == ["patient001", "patient101"]
    messages = " ".join(str(w.message) for w in record)
    assert "patient002" in messages and "unknown group" in messages
    assert "patient005" in messages and "patient005_frame09.nii.gz" in messages
    with pytest.raises(ACDCError, match="patient002"):
        list(load_cohort(tree, skip_bad=False))
    with pytest.raises(ACDCError, match="unknown group"):
        find_subjects(tree)
    with pytest.warns(UserWarning, match="patient002"):
        assert [i.subject for i in find_subjects(tree, skip_bad=True)] == ["patient001", "patient005", "patient101"]


def test_load_nifti_shapes_and_4d_hint(tmp_path: Path) -> None:
    cine = tmp_path / "cine.nii.gz"
    save_nifti(cine, np.zeros(ACDC_SHAPE + (30,), np.float32))
    with pytest.raises(ACDCError, match=r"4-D \(X,Y,Z,T\)=\(24, 28, 6, 30\); pick one frame.*slicer") as err:
        load_nifti(cine)
    assert "cine.nii.gz" in str(err.value)
    single = tmp_path / "single.nii"
    save_nifti(single, np.arange(np.prod(ACDC_SHAPE), dtype=np.float32).reshape(ACDC_SHAPE + (1,)))
    data, affine, spacing = load_nifti(single)
    assert data.shape == ACDC_SHAPE and data[1, 0, 0] == ACDC_SHAPE[1] * ACDC_SHAPE[2]
    np.testing.assert_allclose(spacing, ACDC_SPACING, rtol=1e-6)
    flat = tmp_path / "flat.nii.gz"
    save_nifti(flat, np.zeros((10, 12), np.float32))
    with pytest.raises(ACDCError, match=r"flat.nii.gz: expected a 3-D volume"):
        load_nifti(flat)


def test_gzip_payload_that_is_not_nifti(tmp_path: Path) -> None:
    path = tmp_path / "junk.nii.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(b"\x00" * 400)
    with pytest.raises(ACDCError, match="junk.nii.gz: unreadable or corrupt NIfTI"):
        load_nifti(path)


# ---------------------------------------------------------------------------------------------------------------
# volumes too large for the memory, and malformed headers: refused from the header, in one line, quietly


def test_volumes_above_the_voxel_limit_are_refused_from_the_header(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("CVAE_MAX_VOXELS", raising=False)
    assert MAX_VOXELS == 2 ** 24 and max_voxels() == MAX_VOXELS
    path = tmp_path / "frame.nii.gz"
    save_nifti(path, np.ones(ACDC_SHAPE, np.float32))  # 24 x 28 x 6 = 4032 voxels
    label_path = tmp_path / "frame_gt.nii.gz"
    save_nifti(label_path, heart_label())
    assert load_nifti(path, limit=4032)[0].shape == ACDC_SHAPE  # the limit itself is allowed
    text = one_line_error(ACDCError, lambda: load_nifti(path, limit=4031))
    assert text.startswith(f"{path}: the header announces 24 x 28 x 6 = 4,032 voxels")
    assert "above the limit of 4,031" in text and "--max-voxels" in text
    assert "limit of 4,031" in one_line_error(ACDCError, lambda: load_label(label_path, limit=4031))
    assert load_label(label_path, limit=4032)[0].dtype == np.uint8

    monkeypatch.setenv("CVAE_MAX_VOXELS", "4031")  # the environment sets the default limit
    assert max_voxels() == 4031
    assert "limit of 4,031" in one_line_error(ACDCError, lambda: load_nifti(path))
    assert "limit of 4,031" in one_line_error(ACDCError, lambda: load_label(label_path))
    assert load_nifti(path, limit=5000)[0].shape == ACDC_SHAPE  # an explicit limit wins
    monkeypatch.setenv("CVAE_MAX_VOXELS", " 4032 ")
    assert load_nifti(path)[0].shape == ACDC_SHAPE
    for bad in ("abc", "0", "-5", "1e6", "12.5"):
        monkeypatch.setenv("CVAE_MAX_VOXELS", bad)
        text = one_line_error(ACDCError, max_voxels)
        assert text.startswith("$CVAE_MAX_VOXELS=") and "not a positive number of voxels" in text
        assert "CVAE_MAX_VOXELS" in one_line_error(ACDCError, lambda: load_nifti(path))
    monkeypatch.setenv("CVAE_MAX_VOXELS", "")
    assert max_voxels() == MAX_VOXELS


def test_a_huge_header_over_a_few_bytes_is_refused_before_reading(tmp_path: Path, capfd, monkeypatch) -> None:
    monkeypatch.delenv("CVAE_MAX_VOXELS", raising=False)
    path = tmp_path / "huge.nii"
    path.write_bytes(malformed_nifti("huge"))
    assert path.stat().st_size == 360
    text = one_line_error(ACDCError, lambda: load_nifti(path))
    # the limit, not a truncation error: refused from the header before any data is read
    assert text.startswith(f"{path}: the header announces 30000 x 30000 x 1000 = 900,000,000,000 voxels")
    assert f"above the limit of {MAX_VOXELS:,}" in text
    gz = tmp_path / "huge.nii.gz"
    gz.write_bytes(gzip.compress(malformed_nifti("huge")))
    assert "900,000,000,000 voxels" in one_line_error(ACDCError, lambda: load_nifti(gz))
    assert capfd.readouterr().err == ""


def test_a_malformed_header_is_one_line_and_nibabel_says_nothing(tmp_path: Path, capfd) -> None:
    path = tmp_path / "datatype.nii"
    path.write_bytes(malformed_nifti("datatype"))
    text = one_line_error(ACDCError, lambda: load_nifti(path))
    assert text.startswith(f"{path}: unreadable or corrupt NIfTI") and "999" in text
    assert "unreadable or corrupt" in one_line_error(ACDCError, lambda: load_label(path))
    assert capfd.readouterr().err == ""  # nibabel's own logger would print "data code 999 not recognized ..."
    # the logger is quiet only while loading: its state is put back
    assert not nib.imageglobals.logger.disabled
