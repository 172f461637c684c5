"""`cvae register`: outputs on the fixed grid that SimpleITK reads and reproduces, metrics, bad input, and many
pairs in one process (`--pairs`)."""
from __future__ import annotations

import csv
import json
import os
import signal
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy.spatial.transform import Rotation

from cvae.checkpoint import load_checkpoint, save_checkpoint
from cvae.cli import Interrupted
from cvae.data.volumes import load_nifti
from cvae.data.labels import STRUCTURES
from cvae.data.preprocess import preprocess_image_pair, resample_to_grid
from cvae.evaluation.metrics import structure_scores
from cvae.fields import image_tensor
from cvae.io.nifti import NIFTI_INTENT_VECTOR, load_vector_field
from cvae.commands.register import main
from cvae.io.pairs import SUMMARY_COLUMNS, read_pairs
from cvae.io.register import OUTPUT_FILES, register_files, warp_to_grid
from cvae.latent.refine import refine_code
from cvae.losses import symmetric_lcc
from cvae.model import CVAERegistration, ModelConfig
from cvae.optimize import OptimizeSettings, optimize_velocity

from conftest import SHIPPED, TINY_MODEL, TINY_SPACING, malformed_nifti


def make_affine(spacing, angles_deg, origin) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix() @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


FIXED_GRID = ((40, 44, 12), make_affine((2.5, 2.2, 8.0), (15, -8, 30), (-40.0, 25.0, -30.0)))
MOVING_GRID = ((34, 38, 14), make_affine((3.0, 2.6, 6.5), (10, -5, 20), (-45.0, 20.0, -35.0)))
#: The phantom's heart centre (world mm): a little off the centre of the fixed field of view.
HEART = (FIXED_GRID[1] @ np.array([18.0, 24.0, 6.0, 1.0]))[:3]


def phantom(affine: np.ndarray, shape, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """A heart-like scene in world mm sampled on a grid: (image float32, labels uint8 0-3).

    LV cavity (3) inside a myocardium shell (2), an RV cavity (1) beside it, on a smooth textured background.
    ``scale`` < 1 contracts the cavities (an ES-like frame).
    """
    index = np.indices(shape, dtype=np.float64).reshape(3, -1)
    x, y, z = affine[:3, :3] @ index + affine[:3, 3:4]
    centre = HEART
    r_lv = np.sqrt(((x - centre[0]) / (14 * scale)) ** 2 + ((y - centre[1]) / (13 * scale)) ** 2
                   + ((z - centre[2]) / 30) ** 2)
    r_epi = np.sqrt(((x - centre[0]) / 22) ** 2 + ((y - centre[1]) / 21) ** 2 + ((z - centre[2]) / 36) ** 2)
    r_rv = np.sqrt(((x - centre[0] + 28) / (10 * scale)) ** 2 + ((y - centre[1] - 6) / 16) ** 2
                   + ((z - centre[2]) / 28) ** 2)
    labels = np.zeros(x.shape, dtype=np.uint8)
    labels[r_epi < 1] = 2
    labels[r_lv < 1] = 3
    labels[(r_rv < 1) & (r_epi >= 1)] = 1
    image = 0.2 + 0.05 * np.sin(x / 9.0) * np.cos(y / 11.0) + 0.02 * np.sin(z / 13.0)
    image = np.where(labels == 2, 0.35, image)
    image = np.where((labels == 3) | (labels == 1), 1.0, image)
    return (300 * image).reshape(shape).astype(np.float32), labels.reshape(shape)


def write(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, str(path))
    return path


@pytest.fixture(scope="module")
def nifti_pair(tmp_path_factory) -> dict[str, Path]:
    """ES (fixed) and ED (moving) images and labels, each on its own rotated, anisotropic, offset grid."""
    root = tmp_path_factory.mktemp("pair")
    (fshape, faff), (mshape, maff) = FIXED_GRID, MOVING_GRID
    fixed, fixed_seg = phantom(faff, fshape, 0.75)
    moving, moving_seg = phantom(maff, mshape, 1.0)
    return {"fixed": write(root / "fixed.nii.gz", fixed, faff), "moving": write(root / "moving.nii.gz", moving, maff),
            "fixed_seg": write(root / "fixed_seg.nii.gz", fixed_seg, faff),
            "moving_seg": write(root / "moving_seg.nii.gz", moving_seg, maff)}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A small random model whose velocity head is scaled up so that it predicts a smooth field of a few voxels."""
    torch.manual_seed(0)
    model = CVAERegistration(ModelConfig(**TINY_MODEL))
    with torch.no_grad():
        torch.nn.init.normal_(model.decoder.velocity.weight, std=0.3)
        model.decoder.velocity.bias.copy_(torch.tensor([1.2, -0.8, 0.5]))
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", model, spacing=TINY_SPACING)


@pytest.fixture(scope="module")
def outputs(nifti_pair, checkpoint, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("run") / "result"
    metrics = register_files(nifti_pair["fixed"], nifti_pair["moving"], out, checkpoint,
                             fixed_seg=nifti_pair["fixed_seg"], moving_seg=nifti_pair["moving_seg"], device="cpu")
    return out, metrics


def test_every_output_is_on_the_fixed_grid(outputs, nifti_pair):
    out, metrics = outputs
    fixed = nib.load(str(nifti_pair["fixed"]))
    names = {"warped.nii.gz", "warped_seg.nii.gz", "displacement.nii.gz", "inverse_displacement.nii.gz",
             "velocity.nii.gz", "jacobian.nii.gz"}
    assert set(metrics["outputs"]) == names | {"metrics.json"}
    for name in names:
        image = nib.load(str(out / name))
        assert np.allclose(image.affine, fixed.affine, atol=1e-4), name
        assert image.shape[:3] == fixed.shape, name
    for name in ("displacement.nii.gz", "inverse_displacement.nii.gz", "velocity.nii.gz"):
        header = nib.load(str(out / name)).header
        assert header.get_data_shape() == (*fixed.shape, 1, 3)
        assert int(header["intent_code"]) == NIFTI_INTENT_VECTOR
    assert nib.load(str(out / "warped_seg.nii.gz")).get_data_dtype() == np.uint8
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_simpleitk_resampling_with_the_field_reproduces_warped(outputs, nifti_pair):
    out, _ = outputs
    displacement, _ = load_vector_field(out / "displacement.nii.gz")
    norm = np.linalg.norm(displacement, axis=-1)
    assert norm.max() > 5.0  # a real deformation of several mm, not the identity

    fixed, moving = sitk.ReadImage(str(nifti_pair["fixed"])), sitk.ReadImage(str(nifti_pair["moving"]))
    field = sitk.ReadImage(str(out / "displacement.nii.gz"))
    transform = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    resampled = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0)).T
    warped = nib.load(str(out / "warped.nii.gz")).get_fdata()
    moving_data = nib.load(str(nifti_pair["moving"])).get_fdata()
    span = moving_data.max() - moving_data.min()
    assert np.abs(resampled - warped).mean() < 0.01 * span
    # ... and it is not the unwarped resampling: the field matters.
    plain = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, sitk.Transform(), sitk.sitkLinear, 0.0)).T
    assert np.abs(plain - warped).mean() > 5 * np.abs(resampled - warped).mean()

    seg = sitk.ReadImage(str(nifti_pair["moving_seg"]))
    field = sitk.ReadImage(str(out / "displacement.nii.gz"))
    transform = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    seg_resampled = sitk.GetArrayFromImage(sitk.Resample(seg, fixed, transform, sitk.sitkNearestNeighbor, 0)).T
    warped_seg = np.asarray(nib.load(str(out / "warped_seg.nii.gz")).dataobj)
    assert (seg_resampled == warped_seg).mean() > 0.99


def test_inverse_displacement_undoes_the_displacement(outputs, nifti_pair):
    out, _ = outputs
    fields = [sitk.ReadImage(str(out / n)) for n in ("displacement.nii.gz", "inverse_displacement.nii.gz")]
    forward, inverse = (sitk.DisplacementFieldTransform(sitk.Cast(f, sitk.sitkVectorFloat64)) for f in fields)
    fixed = sitk.ReadImage(str(nifti_pair["fixed"]))
    rng = np.random.default_rng(0)
    size = np.asarray(fixed.GetSize())
    errors, moves = [], []
    for index in rng.uniform(0.3 * size, 0.7 * size, size=(200, 3)):  # central region, inside the crop
        x = np.asarray(fixed.TransformContinuousIndexToPhysicalPoint(index.tolist()))
        y = np.asarray(forward.TransformPoint(x.tolist()))
        errors.append(np.linalg.norm(np.asarray(inverse.TransformPoint(y.tolist())) - x))
        moves.append(np.linalg.norm(y - x))
    assert np.mean(moves) > 2.0
    assert np.mean(errors) < 0.1 * np.mean(moves)


def test_metrics_json(outputs, nifti_pair):
    out, metrics = outputs
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["segmentation"] == metrics["segmentation"]
    seg = saved["segmentation"]
    assert list(seg["structures"]) == list(STRUCTURES)
    # The unregistered scores are those of the moving labels resampled onto the fixed grid (no deformation).
    fixed_img, moving_img = nib.load(str(nifti_pair["fixed_seg"])), nib.load(str(nifti_pair["moving_seg"]))
    plain = warp_to_grid(np.asarray(moving_img.dataobj), moving_img.affine, fixed_img.affine, fixed_img.shape,
                         order=0)
    spacing = np.sqrt((fixed_img.affine[:3, :3] ** 2).sum(axis=0))
    expected = structure_scores(plain, np.asarray(fixed_img.dataobj), spacing)
    for name, values in seg["structures"].items():
        assert values["dice_unregistered"] == pytest.approx(expected[name]["dice"])
        assert values["hd95_mm_unregistered"] == pytest.approx(expected[name]["hd95"])
    warped = np.asarray(nib.load(str(out / "warped_seg.nii.gz")).dataobj)
    after = structure_scores(warped, np.asarray(fixed_img.dataobj), spacing)
    for name, values in seg["structures"].items():  # the registered scores are those of warped_seg.nii.gz
        assert values["dice"] == pytest.approx(after[name]["dice"])
        assert values["hd95_mm"] == pytest.approx(after[name]["hd95"])
    assert seg["dice_mean"] != pytest.approx(seg["dice_unregistered_mean"], abs=1e-3)  # the field moved the labels
    assert seg["dice_mean"] == pytest.approx(np.mean([v["dice"] for v in after.values()]))
    assert 0.0 <= saved["negative_jacobian_fraction"] < 0.05
    assert saved["mean_displacement_mm"] > 0.5
    assert set(saved["seconds"]) == {"preprocessing", "registration", "resampling", "writing", "total"}
    assert 0 < saved["seconds"]["registration"] < saved["seconds"]["total"]


def test_jacobian_matches_finite_differences_of_the_world_field(outputs):
    """The crop grid's determinant, resampled, is that of the written field on the fixed (rotated) grid."""
    out, _ = outputs
    jac = nib.load(str(out / "jacobian.nii.gz")).get_fdata()
    displacement, affine = load_vector_field(out / "displacement.nii.gz")
    d_by_index = np.stack(np.gradient(displacement, axis=(0, 1, 2)), axis=-1)  # [..., i, j] = d d_i / d p_j
    det = np.linalg.det(np.eye(3) + d_by_index @ np.linalg.inv(affine[:3, :3]))
    inner = (slice(2, -2),) * 3
    assert np.abs(jac - 1)[inner].mean() > 0.01  # a deformation that changes volumes
    assert np.abs(det - jac)[inner].mean() < 0.1 * np.abs(jac - 1)[inner].mean()
    assert jac.min() > 0


def test_cli_rerun_replaces_outputs_and_drops_stale_ones(nifti_pair, checkpoint, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--fixed", str(nifti_pair["fixed"]), "--moving", str(nifti_pair["moving"]), "--out", str(out),
            "--checkpoint", str(checkpoint), "--device", "cpu"]
    assert main(args + ["--moving-seg", str(nifti_pair["moving_seg"])]) == 0
    assert (out / "warped_seg.nii.gz").is_file()
    (out / "notes.txt").write_text("mine")
    first = json.loads((out / "metrics.json").read_text())["files"]
    assert first == sorted(OUTPUT_FILES)  # metrics.json lists what the run wrote
    assert main(args) == 0
    assert "wrote 6 files" in capsys.readouterr().out
    assert not (out / "warped_seg.nii.gz").exists() and (out / "notes.txt").read_text() == "mine"
    metrics = json.loads((out / "metrics.json").read_text())
    assert "segmentation" not in metrics
    assert metrics["files"] == sorted(set(OUTPUT_FILES) - {"warped_seg.nii.gz"})
    assert sorted(p.name for p in out.iterdir()) == sorted(metrics["files"] + ["notes.txt"])
    # a folder of an earlier version of cvae register (its metrics.json lists no files): all its outputs are known
    del metrics["files"]
    (out / "metrics.json").write_text(json.dumps(metrics))
    (out / "warped_seg.nii.gz").write_bytes(b"stale")
    assert main(args) == 0
    assert not (out / "warped_seg.nii.gz").exists() and (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.parent.iterdir()) == ["run"]  # no temporary folder left


def _bad_inputs(tmp: Path, pair: dict[str, Path]) -> dict[str, tuple[list[str], str]]:
    fshape, faff = FIXED_GRID
    image = nib.load(str(pair["fixed"])).get_fdata().astype(np.float32)
    cine = write(tmp / "cine.nii.gz", np.stack([image, image], axis=-1), faff)
    with_nan = image.copy()
    with_nan[3, 4, 5] = np.nan
    nan = write(tmp / "nan.nii.gz", with_nan, faff)
    constant = write(tmp / "constant.nii.gz", np.full(fshape, 7.0, np.float32), faff)
    corrupt = tmp / "corrupt.nii.gz"
    corrupt.write_bytes(pair["fixed"].read_bytes()[:200])
    fixed, moving = ["--fixed", str(pair["fixed"])], ["--moving", str(pair["moving"])]
    return {
        "missing": (["--fixed", str(tmp / "nope.nii.gz"), *moving], "not found"),
        "corrupt": (["--fixed", str(corrupt), *moving], "corrupt"),
        "cine": ([*fixed, "--moving", str(cine)], "pick one frame"),
        "nan": (["--fixed", str(nan), *moving], "NaN"),
        "constant": ([*fixed, "--moving", str(constant)], "constant"),
        "seg grid": ([*fixed, *moving, "--fixed-seg", str(pair["moving_seg"])], "grid"),
        "checkpoint": ([*fixed, *moving, "--checkpoint", str(tmp / "no-such-checkpoint")], "not found"),
    }


@pytest.mark.parametrize("case", ["missing", "corrupt", "cine", "nan", "constant", "seg grid", "checkpoint"])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, nifti_pair, checkpoint, tmp_path, capsys):
    args, message = _bad_inputs(tmp_path, nifti_pair)[case]
    out = tmp_path / "out" / "result"
    if "--checkpoint" not in args:
        args = args + ["--checkpoint", str(checkpoint)]
    assert main(args + ["--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and err.startswith("cvae register: error:")
    assert not out.exists() and not (tmp_path / "out").exists()


@pytest.mark.skipif(not SHIPPED, reason="the shipped checkpoint checkpoints/synthetic-acdc is not there")
def test_shipped_checkpoint_improves_dice_on_a_synthetic_subject(tmp_path):
    from cvae.data.synthetic import make_subject, save_subject

    folder = save_subject(make_subject("testing", 0, seed=123), tmp_path, 1)
    frames = sorted(folder.glob("patient001_frame??.nii.gz"))  # ED (frame01) and ES
    ed, es = frames[0], frames[1]
    metrics = register_files(es, ed, tmp_path / "out", "synthetic-acdc",
                             fixed_seg=str(es).replace(".nii.gz", "_gt.nii.gz"),
                             moving_seg=str(ed).replace(".nii.gz", "_gt.nii.gz"), device="cpu")
    seg = metrics["segmentation"]
    assert seg["dice_mean"] > seg["dice_unregistered_mean"] + 0.03
    assert metrics["negative_jacobian_fraction"] < 0.01


def preprocessed_as_register_does(nifti_pair, checkpoint) -> tuple[CVAERegistration, torch.Tensor, torch.Tensor]:
    """The checkpoint's model and the pair as ``cvae register`` feeds it: the moving image resampled onto the fixed
    grid (it is on another one), then both cropped and normalised onto the checkpoint's grid."""
    model, config = load_checkpoint(checkpoint, "cpu")
    fixed, fixed_affine, _ = load_nifti(nifti_pair["fixed"])
    moving, moving_affine, _ = load_nifti(nifti_pair["moving"])
    moving = resample_to_grid(moving, moving_affine, fixed_affine, fixed.shape, order=1)
    pair = preprocess_image_pair(fixed, moving, fixed_affine, size=model.config.image_size, spacing=config["spacing"])
    return model, image_tensor(pair.fixed), image_tensor(pair.moving)


def test_register_cli_records_the_refinement(nifti_pair, checkpoint, tmp_path, capsys):
    args = ["--fixed", str(nifti_pair["fixed"]), "--moving", str(nifti_pair["moving"]), "--checkpoint",
            str(checkpoint), "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "refined"), "--refine-steps", "3"]) == 0
    metrics = json.loads((tmp_path / "refined" / "metrics.json").read_text())
    assert metrics["refinement"]["steps"] == 3
    model, f, m = preprocessed_as_register_does(nifti_pair, checkpoint)
    expected = refine_code(model, f, m, steps=3)
    with torch.no_grad():  # before refinement: the symmetric LCC of the encoder's code
        cfg = model.config
        plain = symmetric_lcc(f, m, model.register(f, m).velocity, cfg.n_steps, cfg.sigma_lcc, cfg.kernel_lcc)
    assert metrics["refinement"]["lcc_before"] == pytest.approx(float(plain[0]), abs=1e-5)
    assert metrics["refinement"]["lcc_before"] == pytest.approx(float(expected.lcc_before[0]), abs=1e-5)
    assert metrics["refinement"]["lcc_after"] == pytest.approx(float(expected.lcc_after[0]), abs=1e-5)
    assert metrics["refinement"]["lcc_after"] > metrics["refinement"]["lcc_before"] + 1e-4
    assert main([*args, "--out", str(tmp_path / "plain")]) == 0
    assert "refinement" not in json.loads((tmp_path / "plain" / "metrics.json").read_text())
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "bad"), "--refine-steps", "-2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "steps must be >= 0" in err[0]
    assert not (tmp_path / "bad").exists()


def test_register_cli_records_the_velocity_optimisation(nifti_pair, checkpoint, tmp_path, capsys):
    args = ["--fixed", str(nifti_pair["fixed"]), "--moving", str(nifti_pair["moving"]), "--checkpoint",
            str(checkpoint), "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "optimised"), "--optimize-steps", "4"]) == 0
    metrics = json.loads((tmp_path / "optimised" / "metrics.json").read_text())
    model, f, m = preprocessed_as_register_does(nifti_pair, checkpoint)
    _, report = optimize_velocity(model, f, m, OptimizeSettings(coarse_steps=4))
    assert metrics["optimization"]["steps"] == sum(report.steps) and 1 <= sum(report.steps) <= 4
    assert metrics["optimization"]["lcc_before"] == pytest.approx(float(report.lcc_before[0]), abs=1e-5)
    assert metrics["optimization"]["lcc_after"] == pytest.approx(float(report.lcc_after[0]), abs=1e-5)
    assert metrics["optimization"]["lcc_after"] > metrics["optimization"]["lcc_before"] + 1e-4
    assert "refinement" not in metrics
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "both"), "--optimize", "--refine-steps", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not both" in err[0]
    assert not (tmp_path / "both").exists()


# ---------------------------------------------------------------------------------------------------------------
# what --out may be, volumes too large, and interrupts while writing


def snapshot(folder: Path) -> dict[str, bytes]:
    """``{name: bytes}`` of every entry of ``folder`` (hidden ones included)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def register_args(pair: dict[str, Path], checkpoint: Path, out: Path) -> list[str]:
    return ["--fixed", str(pair["fixed"]), "--moving", str(pair["moving"]), "--out", str(out), "--checkpoint",
            str(checkpoint), "--device", "cpu"]


def one_error_line(capfd) -> str:
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("case", ["max-voxels", "datatype", "huge"])
def test_volumes_too_large_or_with_malformed_headers_exit_2_quietly(case, nifti_pair, checkpoint, tmp_path, capfd,
                                                                    monkeypatch):
    monkeypatch.delenv("CVAE_MAX_VOXELS", raising=False)
    out = tmp_path / "out" / "result"
    args = register_args(nifti_pair, checkpoint, out)
    if case == "max-voxels":  # the fixed image has 40 x 44 x 12 voxels
        args += ["--max-voxels", "100"]
        message = f"cvae register: error: {nifti_pair['fixed']}: the header announces 40 x 44 x 12 = 21,120 voxels"
        expected = [message, "above the limit of 100"]
    else:
        bad = tmp_path / f"{case}.nii"
        bad.write_bytes(malformed_nifti(case))
        args[args.index("--moving") + 1] = str(bad)
        expected = [f"cvae register: error: {bad}: ",
                    "unreadable or corrupt NIfTI" if case == "datatype" else "900,000,000,000 voxels, above the limit"]
    assert main(args) == 2
    line = one_error_line(capfd)  # nothing else on stderr: no traceback, nothing from nibabel
    assert line.startswith(expected[0]) and expected[1] in line, line
    assert not (tmp_path / "out").exists()
    assert main(register_args(nifti_pair, checkpoint, out) + ["--max-voxels", str(40 * 44 * 12)]) == 0
    assert (out / "warped.nii.gz").is_file()


def test_an_out_folder_holding_other_files_is_refused_unless_overwrite(nifti_pair, checkpoint, tmp_path, capfd):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    (out / "warped.nii.gz").write_bytes(b"my own warped image")
    (out / "warped_seg.nii.gz").write_bytes(b"my own segmentation")
    before = snapshot(out)
    # refused before anything is loaded: a missing input would be the error otherwise
    missing = register_args(nifti_pair, checkpoint, out)
    missing[missing.index("--fixed") + 1] = str(tmp_path / "no-such-image.nii.gz")
    assert main(missing) == 2
    line = one_error_line(capfd)
    assert line.startswith(f"cvae register: error: --out {out} holds files that cvae register did not write")
    assert "--overwrite" in line
    assert main(register_args(nifti_pair, checkpoint, out)) == 2
    assert "holds files that cvae register did not write" in one_error_line(capfd)
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["mine"]

    assert main(register_args(nifti_pair, checkpoint, out) + ["--overwrite"]) == 0
    assert "wrote 6 files" in capfd.readouterr().out
    written = set(OUTPUT_FILES) - {"warped_seg.nii.gz"}
    assert sorted(p.name for p in out.iterdir()) == sorted(written | {"notes.txt", "warped_seg.nii.gz"})
    assert (out / "notes.txt").read_text() == "my notes"  # the rest is kept, even a file named like an output
    assert (out / "warped_seg.nii.gz").read_bytes() == b"my own segmentation"  # that this run does not write
    assert nib.load(str(out / "warped.nii.gz")).shape == FIXED_GRID[0]  # replaced by this run's
    assert sorted(json.loads((out / "metrics.json").read_text())["files"]) == sorted(written)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_an_empty_out_folder_is_accepted_and_a_new_one_gets_the_umask_mode(nifti_pair, checkpoint, tmp_path):
    (tmp_path / "empty").mkdir()
    assert main(register_args(nifti_pair, checkpoint, tmp_path / "empty")) == 0
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == sorted(set(OUTPUT_FILES) - {"warped_seg.nii.gz"})
    previous = os.umask(0o027)
    try:
        assert main(register_args(nifti_pair, checkpoint, tmp_path / "private")) == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o750
    assert {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "private").iterdir()} == {0o640}


@pytest.mark.parametrize("interrupt, code, how", [
    (KeyboardInterrupt, 130, "interrupted (Ctrl-C)"),
    (lambda: Interrupted(signal.SIGTERM), 143, "stopped by SIGTERM"),
])
def test_an_interrupt_while_writing_keeps_the_earlier_outputs(interrupt, code, how, nifti_pair, checkpoint, tmp_path,
                                                              capfd, monkeypatch):
    out = tmp_path / "run"
    args = register_args(nifti_pair, checkpoint, out)
    assert main(args + ["--moving-seg", str(nifti_pair["moving_seg"])]) == 0
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    capfd.readouterr()
    calls = []

    def stopped(path, *rest, **kwargs):
        calls.append(Path(path).parent)
        (Path(path).parent / "half-written.nii.gz").write_bytes(b"half")
        raise interrupt()

    monkeypatch.setattr("cvae.io.register.save_vector_field", stopped)
    assert main(args) == code  # this run would also remove warped_seg.nii.gz
    assert one_error_line(capfd) == f"cvae register: {how}: nothing half-written was kept"
    assert calls and calls[0].name.startswith(".run.tmp-")  # it was writing into the temporary folder
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no .run.tmp-* left
    assert main(register_args(nifti_pair, checkpoint, tmp_path / "new")) == code
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # a new folder is not created at all


# ---------------------------------------------------------------------------------------------------------------
# cvae register --pairs: many pairs in one process, the same outputs as one pair at a time, failures isolated


def pairs_file(path: Path, rows: list[dict[str, str]]) -> Path:
    columns = sorted({key for row in rows for key in row})
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def summary(out: Path) -> list[dict[str, str]]:
    with open(out / "pairs.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_pairs_give_the_outputs_of_single_registrations(nifti_pair, checkpoint, outputs, tmp_path, capsys):
    single, metrics = outputs
    (tmp_path / "images").mkdir()
    for key, path in nifti_pair.items():  # the second row names its files relative to the CSV's folder
        (tmp_path / "images" / path.name).write_bytes(path.read_bytes())
    listed = pairs_file(tmp_path / "pairs.csv", [
        {"name": "with-labels", **{k: str(v) for k, v in nifti_pair.items()}},
        {"fixed": "images/fixed.nii.gz", "moving": "images/moving.nii.gz"}])
    out = tmp_path / "out"
    assert main(["--pairs", str(listed), "--out", str(out), "--checkpoint", str(checkpoint), "--device", "cpu"]) == 0
    assert "registered 2 of 2 pairs" in capsys.readouterr().out
    alone = tmp_path / "alone"  # without labels the crop is centred from the motion: another single run
    register_files(nifti_pair["fixed"], nifti_pair["moving"], alone, checkpoint, device="cpu")
    for name, reference in (("with-labels", single), ("002", alone)):
        for field in ("displacement.nii.gz", "warped.nii.gz", "jacobian.nii.gz"):
            np.testing.assert_array_equal(nib.load(out / name / field).get_fdata(),
                                          nib.load(reference / field).get_fdata(), err_msg=f"{name}/{field}")
    assert (out / "with-labels" / "warped_seg.nii.gz").is_file() and not (out / "002" / "warped_seg.nii.gz").exists()
    rows = summary(out)
    assert list(rows[0]) == list(SUMMARY_COLUMNS) and [r["status"] for r in rows] == ["ok", "ok"]
    assert float(rows[0]["dice_mean"]) == pytest.approx(metrics["segmentation"]["dice_mean"], abs=1e-6)
    assert rows[1]["dice_mean"] == "" and float(rows[1]["folding_percent"]) == 0.0


def test_a_failing_pair_is_recorded_and_the_others_are_registered(nifti_pair, checkpoint, tmp_path, capsys):
    shape, affine = FIXED_GRID
    flat = write(tmp_path / "flat.nii.gz", np.full(shape, 7.0, np.float32), affine)
    listed = pairs_file(tmp_path / "pairs.csv", [
        {"name": "bad", "fixed": str(flat), "moving": str(nifti_pair["moving"])},
        {"name": "good", "fixed": str(nifti_pair["fixed"]), "moving": str(nifti_pair["moving"])}])
    out = tmp_path / "out"
    assert main(["--pairs", str(listed), "--out", str(out), "--checkpoint", str(checkpoint), "--device", "cpu"]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("registering")]
    assert len(err) == 1 and "1 of 2 pairs" in err[0] and "first bad" in err[0] and "constant" in err[0]
    rows = {r["name"]: r for r in summary(out)}
    assert rows["bad"]["status"] == "failed" and "constant" in rows["bad"]["error"]
    assert rows["good"]["status"] == "ok" and (out / "good" / "displacement.nii.gz").is_file()
    assert not (out / "bad").exists()


def test_a_bad_pairs_file_stops_before_any_work(nifti_pair, checkpoint, tmp_path, capsys):
    fixed, moving = str(nifti_pair["fixed"]), str(nifti_pair["moving"])
    cases = {
        "no moving column": ([{"fixed": fixed}], "moving missing"),
        "a missing file": ([{"fixed": fixed, "moving": moving}, {"fixed": fixed, "moving": "gone.nii.gz"}],
                           "row 2: moving file gone.nii.gz not found"),
        "a name twice": ([{"name": "a", "fixed": fixed, "moving": moving}] * 2, "row 2: name 'a' is used twice"),
        "a path as name": ([{"name": "../x", "fixed": fixed, "moving": moving}], "not a folder name"),
    }
    for case, (rows, message) in cases.items():
        listed = pairs_file(tmp_path / f"{case}.csv", rows)
        out = tmp_path / case
        assert main(["--pairs", str(listed), "--out", str(out), "--checkpoint", str(checkpoint)]) == 2, case
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (case, err)
        assert not out.exists(), case
    with pytest.raises(ValueError, match="cannot read"):
        read_pairs(tmp_path / "nowhere.csv")


@pytest.mark.parametrize("argv", [["--pairs", "p.csv", "--fixed", "f.nii.gz"], ["--fixed", "f.nii.gz"], []])
def test_one_pair_or_a_pairs_file_not_both(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main([*argv, "--out", str(tmp_path / "out")])
    assert stopped.value.code == 2
    assert "give --fixed and --moving, or --pairs" in capsys.readouterr().err
