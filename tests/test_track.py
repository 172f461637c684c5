"""cvae track: the ED frame registered to every frame of a cine, its labels carried, the volume curves measured."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from cvae.checkpoint import save_checkpoint
from cvae.commands.track import main
from cvae.model import CVAERegistration, ModelConfig

from conftest import ACDC_SPACING, SHIPPED, TINY_MODEL, TINY_SPACING, as_cine_only, dice_by_hand, write_patient

SHIFT = 0.5  # crop voxels of 6 mm along the crop's first axis: 3 mm


@pytest.fixture(scope="module")
def cine(tmp_path_factory) -> dict[str, Path]:
    """A 12-frame cine (ED 1, ES 5) on an oblique ACDC-like grid, and its ED segmentation."""
    folder = write_patient(tmp_path_factory.mktemp("cine") / "testing", 1, es=5, seed=3)
    seg = folder.parent.parent / "ed_seg.nii.gz"
    seg.write_bytes((folder / "patient001_frame01_gt.nii.gz").read_bytes())
    as_cine_only(folder)
    return {"cine": folder / "patient001_4d.nii.gz", "ed_seg": seg}


@pytest.fixture(scope="module")
def translation(tmp_path_factory) -> Path:
    """A small model whose velocity is the constant SHIFT along the crop's first axis, whatever the frames (the
    crop grid is deep enough in Z that the smoothing's zero padding does not reach the cine)."""
    torch.manual_seed(0)
    model = CVAERegistration(ModelConfig(**{**TINY_MODEL, "image_size": (32, 32, 32)}))
    with torch.no_grad():
        model.decoder.velocity.weight.zero_()
        model.decoder.velocity.bias.copy_(torch.tensor([SHIFT, 0.0, 0.0]))
    return save_checkpoint(tmp_path_factory.mktemp("model") / "translation", model, spacing=TINY_SPACING)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_labels_are_carried_by_the_transform_and_measured(cine, translation, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--cine", str(cine["cine"]), "--ed-seg", str(cine["ed_seg"]), "--out", str(out), "--checkpoint",
                 str(translation), "--device", "cpu", "--batch-size", "5"]) == 0
    assert capsys.readouterr().out.startswith("tracked 12 frames")
    seg_image = nib.load(str(cine["ed_seg"]))
    seg = np.asarray(seg_image.dataobj).astype(np.uint8)
    tracked_image = nib.load(str(out / "tracked_seg_4d.nii.gz"))
    tracked = np.asarray(tracked_image.dataobj)
    assert tracked.shape == (*seg.shape, 12) and np.allclose(tracked_image.affine, seg_image.affine)
    assert np.array_equal(tracked[..., 0], seg)  # the ED frame keeps its segmentation
    # every other frame: ED labels pulled by 3 mm along the first axis, i.e. 3 / 1.5625 voxels of the cine, by hand
    source = np.rint(np.arange(seg.shape[0]) + 6.0 * SHIFT / ACDC_SPACING[0]).astype(int)
    expected = np.zeros_like(seg)
    inside = source < seg.shape[0]
    expected[inside] = seg[source[inside]]
    for t in range(1, 12):
        assert np.array_equal(tracked[..., t], expected), t
    # volumes by hand: voxel counts times the voxel volume of the header
    voxel_ml = float(np.prod(seg_image.header.get_zooms()[:3])) / 1000
    rows = read_csv(out / "volumes.csv")
    assert [int(r["frame"]) for r in rows] == list(range(1, 13))
    for r, t in zip(rows, range(12)):
        for column, value in (("lv_cavity_ml", 3), ("lv_myocardium_ml", 2), ("rv_cavity_ml", 1)):
            assert float(r[column]) == pytest.approx((tracked[..., t] == value).sum() * voxel_ml, rel=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    lv = [float(r["lv_cavity_ml"]) for r in rows]
    assert summary["es_frame"] == int(np.argmin(lv)) + 1 and summary["frames"] == 12
    assert summary["LVEF_percent"] == pytest.approx(100 * (lv[0] - min(lv)) / lv[0], abs=1e-3)
    assert summary["folding_percent"] == [0.0] * 12
    codes = read_csv(out / "codes.csv")
    assert len(codes) == 12 and sum(k.startswith("mu_") for k in codes[0]) == 16
    motion = [float(r["motion_mm"]) for r in codes]  # the crop grid's mean: 3 mm inside, fading at its borders
    assert max(motion) == pytest.approx(min(motion), rel=1e-5) and 0.5 * 6.0 * SHIFT < motion[0] < 6.0 * SHIFT


def test_without_a_segmentation_only_codes_and_a_summary(cine, translation, tmp_path):
    out = tmp_path / "out"
    assert main(["--cine", str(cine["cine"]), "--out", str(out), "--checkpoint", str(translation),
                 "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["codes.csv", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["es_frame_from"] == "largest mean displacement" and "LVEF_percent" not in summary


@pytest.mark.parametrize("case, message", [
    ("frame", "--ed-frame must be one of the cine's frames 1-12, got 13"),
    ("3-d", "a cine is 4-D"),
    ("seg-grid", "is not the cine's frame shape"),
    ("foreign-out", "holds files that cvae track did not write"),
])
def test_bad_input_is_one_line_and_writes_nothing(case, message, cine, translation, tmp_path, capsys):
    args = {"--cine": str(cine["cine"]), "--out": str(tmp_path / "out"), "--checkpoint": str(translation)}
    if case == "frame":
        args["--ed-frame"] = "13"
    elif case == "3-d":
        args["--cine"] = str(cine["ed_seg"])
    elif case == "seg-grid":
        small = nib.load(str(cine["ed_seg"]))
        nib.save(nib.Nifti1Image(np.asarray(small.dataobj)[:-1], small.affine), str(tmp_path / "small.nii.gz"))
        args["--ed-seg"] = str(tmp_path / "small.nii.gz")
    else:
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "mine.txt").write_text("keep")
    assert main([a for pair in args.items() for a in pair] + ["--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cvae track: error:") and message in err[0], err
    assert case == "foreign-out" or not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.skipif(not SHIPPED, reason="the shipped checkpoint is not there")
def test_the_shipped_model_finds_es_and_tracks_better_than_no_registration(tmp_path):
    """A synthetic cine with exact ED and ES labels: the ES frame of Info.cfg is found from the volume curve, and
    the labels carried to it overlap the true ES labels better than the ED labels do."""
    from cvae.data.synthetic import make_cohort

    root = make_cohort(tmp_path / "cohort", n_train=0, n_test=1, seed=3, cine=True, workers=1)
    folder = root / "testing" / "patient001"
    info = dict(line.split(": ") for line in (folder / "Info.cfg").read_text().splitlines())
    es = int(info["ES"])
    out = tmp_path / "out"
    seg = folder / "patient001_frame01_gt.nii.gz"
    assert main(["--cine", str(folder / "patient001_4d.nii.gz"), "--ed-seg", str(seg), "--out", str(out),
                 "--device", "cpu"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert abs(summary["es_frame"] - es) <= 1 and max(summary["folding_percent"]) == 0.0
    tracked = np.asarray(nib.load(str(out / "tracked_seg_4d.nii.gz")).dataobj)[..., es - 1]
    ed, truth = (np.asarray(nib.load(str(folder / f"patient001_frame{f:02d}_gt.nii.gz")).dataobj) for f in (1, es))
    for value in (1, 2, 3):
        assert dice_by_hand(tracked == value, truth == value) > dice_by_hand(ed == value, truth == value) + 0.02
