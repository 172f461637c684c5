"""cvae.io.uploads: what the app accepts from its file uploaders, what it refuses (one line each), and that the
temporary folder disappears."""
from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cvae.data.preprocess import preprocess_image_pair
from cvae.io.uploads import MAX_UPLOAD_MB, Upload, UploadError, check_upload, stage_uploads, staged_uploads

from conftest import malformed_nifti

AFFINE = np.diag([1.6, 1.6, 8.0, 1.0])


def nifti(data: np.ndarray, affine: np.ndarray = AFFINE, name: str = "image.nii.gz") -> Upload:
    raw = nib.Nifti1Image(np.asarray(data), affine).to_bytes()
    return Upload(name, gzip.compress(raw) if name.endswith(".gz") else raw)


def image(shape=(24, 20, 6), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32) * 300


def labels(shape=(24, 20, 6)) -> np.ndarray:
    label = np.zeros(shape, dtype=np.uint8)
    label[6:18, 5:15, 1:5] = 2
    label[9:15, 8:12, 1:5] = 3
    label[2:6, 5:15, 1:5] = 1
    return label


def test_a_valid_pair_is_staged_loaded_and_removed_afterwards():
    uploads = (nifti(image(seed=1), name="es.nii.gz"), nifti(image(seed=2), name="ed.nii"),
               nifti(labels(), name="es_gt.nii.gz"), nifti(labels(), name="ed_gt.nii.gz"))
    with staged_uploads(*uploads) as staged:
        folder = staged.folder
        assert sorted(p.name for p in folder.iterdir()) == ["fixed.nii.gz", "fixed_seg.nii.gz", "moving.nii",
                                                            "moving_seg.nii.gz"]
        np.testing.assert_allclose(staged.fixed, image(seed=1), rtol=1e-6)
        np.testing.assert_array_equal(staged.moving_seg, labels())
        np.testing.assert_allclose(staged.spacing, (1.6, 1.6, 8.0))
        pair = staged.preprocess(size=(16, 16, 8), spacing=(3.0, 3.0, 6.0))
        # the uploaded pair is preprocessed as the cohort's pairs are, on the files' own affine
        expected = preprocess_image_pair(image(seed=1), image(seed=2), AFFINE, labels(), labels(), size=(16, 16, 8),
                                         spacing=(3.0, 3.0, 6.0))
        assert pair.fixed.shape == (16, 16, 8)
        for name in ("fixed", "moving", "fixed_label", "moving_label", "affine"):
            np.testing.assert_allclose(getattr(pair, name), getattr(expected, name), rtol=1e-5, atol=1e-6,
                                       err_msg=name)
        assert (pair.fixed_label == 3).sum() > 0  # the LV cavity is in the crop
    assert not folder.exists()


def test_the_folder_is_removed_when_an_upload_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(UploadError, match="different sizes"):
        with staged_uploads(nifti(image()), nifti(image((24, 20, 7)))):
            pass
    with staged_uploads(nifti(image()), nifti(image())) as staged:
        assert staged.folder.parent == tmp_path and staged.folder.name.startswith("cvae-upload-")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("upload, message", [
    (Upload("notes.txt", b"hello"), "is not a NIfTI file"),
    (Upload("scan.dcm", b"DICM" * 10), "is not a NIfTI file"),
    (Upload("empty.nii", b""), "is empty"),
    (Upload("fake.nii.gz", b"not gzip at all"), "not gzip-compressed"),
    (Upload("corrupt.nii", b"\x00" * 400), "unreadable or corrupt"),
    (Upload("corrupt.nii.gz", gzip.compress(b"\x00" * 400)), "unreadable or corrupt"),
])
def test_files_that_are_not_nifti_volumes_are_refused_with_their_name(tmp_path, upload, message):
    with pytest.raises(UploadError, match=message) as info:
        stage_uploads(tmp_path, upload, nifti(image()))
    text = str(info.value)
    assert "\n" not in text and upload.name in text and str(tmp_path) not in text
    assert text.startswith("fixed file")


@pytest.mark.parametrize("data, message", [
    (np.zeros((24, 20), dtype=np.float32) + np.arange(20, dtype=np.float32), "3-D volume"),
    (np.random.default_rng(0).random((24, 20, 6, 5)).astype(np.float32), "4-D"),
    (np.where(np.arange(24 * 20 * 6).reshape(24, 20, 6) == 7, np.nan, image()).astype(np.float32), "NaN"),
    (np.full((24, 20, 6), 3.0, dtype=np.float32), "constant"),
])
def test_images_of_the_wrong_kind_are_refused(tmp_path, data, message):
    with pytest.raises(UploadError, match=message) as info:
        stage_uploads(tmp_path, nifti(image()), nifti(data, name="bad.nii.gz"))
    assert str(info.value).startswith("moving file 'bad.nii.gz'")


def test_pairs_on_different_grids_are_refused(tmp_path):
    with pytest.raises(UploadError, match="different sizes"):
        stage_uploads(tmp_path / "a", nifti(image()), nifti(image((24, 22, 6))))
    with pytest.raises(UploadError, match="different voxel-to-world affines"):
        stage_uploads(tmp_path / "b", nifti(image()), nifti(image(), affine=np.diag([2.0, 2.0, 8.0, 1.0])))


def test_segmentations_must_hold_acdc_labels_on_their_image_grid(tmp_path):
    with pytest.raises(UploadError, match="fixed_seg|fixed segmentation") as info:
        stage_uploads(tmp_path / "a", nifti(image()), nifti(image()), fixed_seg=nifti(labels((24, 20, 5))))
    assert "not on the grid" in str(info.value)
    bad = labels()
    bad[0, 0, 0] = 7
    with pytest.raises(UploadError, match="label values"):
        stage_uploads(tmp_path / "b", nifti(image()), nifti(image()), moving_seg=nifti(bad))


def test_missing_images_and_huge_files_are_refused(tmp_path):
    with pytest.raises(UploadError, match="no moving image"):
        stage_uploads(tmp_path, nifti(image()), None)
    big = nifti(image(), name="big.nii")
    with pytest.raises(UploadError, match="above the 0.001 MB limit"):
        check_upload("fixed", big, max_mb=0.001)
    assert check_upload("fixed", big) == ".nii" and MAX_UPLOAD_MB == 200
    with pytest.raises(ValueError, match="unknown upload role"):
        check_upload("reference", big)


def test_the_app_limit_matches_the_streamlit_config():
    config = (Path(__file__).resolve().parent.parent / ".streamlit" / "config.toml").read_text()
    assert f"maxUploadSize = {MAX_UPLOAD_MB}" in config
    assert 'address = "127.0.0.1"' in config


@pytest.mark.parametrize("kind, name, message", [
    ("datatype", "scan.nii", "unreadable or corrupt NIfTI"),
    ("datatype", "scan.nii.gz", "unreadable or corrupt NIfTI"),
    ("huge", "scan.nii", "the header announces 30000 x 30000 x 1000 = 900,000,000,000 voxels, above the limit"),
    ("huge", "scan.nii.gz", "the header announces 30000 x 30000 x 1000 = 900,000,000,000 voxels, above the limit"),
])
def test_malformed_headers_are_refused_in_one_line_naming_the_upload(tmp_path, monkeypatch, capfd, kind, name,
                                                                     message):
    monkeypatch.delenv("CVAE_MAX_VOXELS", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    raw = malformed_nifti(kind)
    bad = Upload(name, gzip.compress(raw) if name.endswith(".gz") else raw)
    with pytest.raises(UploadError) as info:
        with staged_uploads(nifti(image()), bad):
            pass
    text = str(info.value)
    assert text.startswith(f"moving file {name!r}: {message}"), text
    assert "\n" not in text and str(tmp_path) not in text and "moving.nii" not in text
    assert list(tmp_path.iterdir()) == []  # the staging folder is gone
    assert capfd.readouterr().err == ""  # nibabel printed nothing


def test_uploads_above_the_voxel_limit_are_refused_naming_the_upload(tmp_path, monkeypatch):
    monkeypatch.setenv("CVAE_MAX_VOXELS", str(24 * 20 * 6 - 1))  # one voxel less than the images
    with pytest.raises(UploadError) as info:
        stage_uploads(tmp_path / "a", nifti(image(), name="es.nii.gz"), nifti(image()))
    text = str(info.value)
    assert text.startswith("fixed file 'es.nii.gz': the header announces 24 x 20 x 6 = 2,880 voxels, above the "
                           "limit of 2,879") and "\n" not in text and str(tmp_path) not in text
    monkeypatch.setenv("CVAE_MAX_VOXELS", str(24 * 20 * 6))  # the images pass, a larger segmentation does not
    staged = stage_uploads(tmp_path / "b", nifti(image()), nifti(image()), moving_seg=nifti(labels()))
    assert staged.fixed.shape == (24, 20, 6)
    with pytest.raises(UploadError, match=r"^moving segmentation file 'gt.nii': the header announces 24 x 20 x 7 = "
                                          r"3,360 voxels, above the limit of 2,880"):
        stage_uploads(tmp_path / "c", nifti(image()), nifti(image()),
                      moving_seg=nifti(labels((24, 20, 7)), name="gt.nii"))
