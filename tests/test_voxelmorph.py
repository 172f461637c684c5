"""VoxelMorph baseline: field convention against VoxelMorph's own warp, checkpoints, training, export, method."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import neurite as ne
import numpy as np
import pytest
import torch

from cvae.checkpoint import CheckpointError
from cvae.fields import compose, warp
from cvae.methods import Method, MethodResult, MethodUnavailable
from cvae.methods.train_voxelmorph import VxmTrainConfig, main, train_voxelmorph
from cvae.methods.voxelmorph import (
    VoxelMorph,
    VoxelMorphConfig,
    VoxelMorphMethod,
    load_voxelmorph_checkpoint,
    save_voxelmorph,
)

from conftest import TINY_SIZE, TINY_SPACING

SMALL = dict(image_size=(16, 24, 8), nb_features=(4, 4))  # three different sides: an axis swap cannot hide


def blob(shape: tuple[int, int, int], centre: tuple[float, float, float], width: float = 3.0) -> torch.Tensor:
    """A Gaussian blob ``(1, 1, X, Y, Z)`` with values in [0, 1]."""
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij"))
    d2 = sum((grid[i] - centre[i]) ** 2 for i in range(3))
    return torch.exp(-d2 / (2 * width ** 2))[None, None]


def moving_model(seed: int = 0, **overrides) -> VoxelMorph:
    """A small VoxelMorph whose flow layer is scaled up so that it predicts displacements of a few voxels."""
    torch.manual_seed(seed)
    model = VoxelMorph(VoxelMorphConfig(**{**SMALL, **overrides}))
    with torch.no_grad():
        torch.nn.init.normal_(model.net.flow_layer.conv0.weight, std=1.5)
    return model


def pair(shape=SMALL["image_size"], seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    noise = [0.05 * torch.rand((1, 1, *shape), generator=gen) for _ in range(2)]
    fixed = (blob(shape, (7.0, 12.0, 4.0)) + noise[0]).clamp(0, 1)
    moving = (blob(shape, (9.0, 10.0, 3.5)) + noise[1]).clamp(0, 1)
    return fixed, moving


@pytest.mark.parametrize("integration_steps", [0, 3])
def test_displacement_matches_voxelmorphs_own_warp(integration_steps):
    model = moving_model(integration_steps=integration_steps).eval()
    fixed, moving = pair()
    with torch.no_grad():
        vxm_u, vxm_warped = model.net(moving, fixed, return_warped_source=True)
    result = model.register(fixed, moving)
    u = result.displacement
    assert u.shape == (1, 3, *SMALL["image_size"])
    assert u.abs().max() > 1.0 and (u[0, 0] - u[0, 1]).abs().max() > 0.5  # a real, anisotropic field
    # VoxelMorph pads with zeros, cvae.fields.warp repeats the border: compare where x + u(x) stays inside.
    coords = u + torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in u.shape[2:]],
                                            indexing="ij"))[None]
    inside = torch.ones(u.shape[2:], dtype=torch.bool)
    for axis, n in enumerate(u.shape[2:]):
        inside &= (coords[0, axis] >= 0) & (coords[0, axis] <= n - 1)
    assert inside.float().mean() > 0.5
    ours = warp(moving, u)
    assert torch.allclose(ours[0, 0][inside], vxm_warped[0, 0][inside], atol=1e-4)
    assert torch.allclose(result.warped, vxm_warped, atol=1e-6)
    assert torch.allclose(u, vxm_u, atol=1e-6)


def test_diffeomorphic_variant_gives_inverse_and_plain_variant_refuses():
    fixed, moving = pair()
    model = moving_model(integration_steps=5)
    result = model.register(fixed, moving, inverse=True)
    round_trip = compose(result.inverse_displacement, result.displacement)[..., 3:-3, 3:-3, 2:-2]
    assert round_trip.abs().mean() < 0.1 * result.displacement.abs().mean()
    with pytest.raises(ValueError, match="no inverse"):
        moving_model(integration_steps=0).register(fixed, moving, inverse=True)


def test_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = VoxelMorph(VoxelMorphConfig(**SMALL))
    fixed, moving = pair()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):
        terms = model(fixed, moving)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        losses.append(float(terms["loss"].detach()))
    assert terms["grad"] > 0 and torch.isclose(terms["loss"], -terms["ncc"] + 1.5 * terms["grad"])
    assert np.mean(losses[-3:]) < losses[0] - 0.05


def test_loss_survives_flat_bright_regions():
    """neurite's NCC in float32 asserts on flat bright regions (window sums cancel); the model's loss must not."""
    shape, gen = (24, 24, 16), torch.Generator().manual_seed(0)
    fixed = 0.9 + 1e-3 * torch.rand((1, 1, *shape), generator=gen)
    moving = torch.rand((1, 1, *shape), generator=gen)
    with pytest.raises(AssertionError, match="NCC coefficients"):
        ne.nn.functional.ncc(moving, fixed, 9)
    torch.manual_seed(0)
    model = VoxelMorph(VoxelMorphConfig(**{**SMALL, "image_size": shape}))
    terms = model(fixed, moving)
    assert terms["loss"].dtype == torch.float32
    # the NCC of the warped moving image and the fixed one, computed in float64
    with torch.no_grad():
        _, warped = model.net(moving, fixed, return_warped_source=True, return_field_type="velocity")
    expected = float(ne.nn.functional.ncc(warped.double(), fixed.double(), model.config.ncc_window).mean())
    ncc, loss, grad = (float(terms[k].detach()) for k in ("ncc", "loss", "grad"))
    assert 0.0 < expected < 1.0 and ncc == pytest.approx(expected, rel=1e-6)
    assert loss == pytest.approx(-expected + model.config.lam * grad, rel=1e-6)
    terms["loss"].backward()


def test_save_load_round_trip(tmp_path):
    model = moving_model()
    fixed, moving = pair()
    folder = save_voxelmorph(tmp_path / "ck", model, spacing=(2.0, 2.0, 4.0), training={"steps_done": 7},
                             metrics={"val_dice": 0.5}, extra_files={"README.md": "card\n"})
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded, config = load_voxelmorph_checkpoint(folder, "cpu")
    assert loaded.config == model.config and not loaded.training
    assert config["spacing"] == [2.0, 2.0, 4.0] and config["training"]["steps_done"] == 7
    assert torch.equal(loaded.register(fixed, moving).displacement, model.register(fixed, moving).displacement)


def _one_line_error(folder: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_voxelmorph_checkpoint(folder, "cpu")
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bad_checkpoints_give_one_line_errors(tmp_path):
    folder = save_voxelmorph(tmp_path / "ck", moving_model())
    config = json.loads((folder / "config.json").read_text())

    def write(model_section: dict, fmt: str = config["format"]) -> None:
        (folder / "config.json").write_text(json.dumps({**config, "format": fmt, "model": model_section}))

    write({**config["model"], "image_size": [15, 24, 8]})
    assert "divisible" in _one_line_error(folder)
    write({**config["model"], "depth": 3})
    assert "unknown model config keys" in _one_line_error(folder)
    write({**config["model"], "nb_features": [8, 8]})
    assert "shape" in _one_line_error(folder)
    write(config["model"], fmt="cvae-reg checkpoint")
    assert "not a 'cvae-reg voxelmorph checkpoint' config" in _one_line_error(folder)
    (folder / "config.json").write_text("{not json")
    assert "not valid JSON" in _one_line_error(folder)
    write(config["model"])
    (folder / "model.safetensors").write_bytes(b"\x00" * 10)
    assert "corrupt" in _one_line_error(folder)
    with pytest.raises(MethodUnavailable, match="corrupt"):
        VoxelMorphMethod(folder, "cpu")


@pytest.mark.parametrize("bad", [dict(ncc_window=4), dict(integration_steps=-1), dict(nb_features=()),
                                 dict(lam=-1.0)])
def test_bad_config_values(bad):
    with pytest.raises(ValueError) as info:
        VoxelMorphConfig(**{**SMALL, **bad})
    assert "\n" not in str(info.value)


def test_method_interface(tmp_path):
    model = moving_model()
    folder = save_voxelmorph(tmp_path / "ck", model, spacing=(2.0, 2.0, 4.0))
    method = VoxelMorphMethod(folder, "cpu")
    assert isinstance(method, Method) and method.name == "voxelmorph"
    assert method.image_size == SMALL["image_size"] and method.spacing == (2.0, 2.0, 4.0)
    fixed, moving = pair()
    result = method.register(fixed, moving, (2.0, 2.0, 4.0))
    assert isinstance(result, MethodResult) and result.seconds > 0
    assert torch.equal(result.displacement, model.register(fixed, moving).displacement)
    with pytest.raises(ValueError, match="spacing"):
        method.register(fixed, moving, (1.5, 1.5, 3.15))
    with pytest.raises(ValueError, match="model expects"):
        method.register(*pair(shape=(16, 16, 8)), (2.0, 2.0, 4.0))


def tiny_run(cohort: Path, out: Path, cache: Path, **kw) -> VxmTrainConfig:
    return VxmTrainConfig(data=str(cohort), out=str(out), spacing=TINY_SPACING,
                          model=VoxelMorphConfig(image_size=TINY_SIZE, nb_features=(8, 8, 8)), val_subjects=2,
                          val_every=3, save_every=2, threads=1, cache_dir=str(cache), **{"lr": 1e-3, **kw})


def train_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_training_run_resume_and_export(tiny_cohort, tiny_cache, tmp_path):
    full = train_voxelmorph(tiny_run(tiny_cohort, tmp_path / "full", tiny_cache, steps=5))
    train_voxelmorph(tiny_run(tiny_cohort, tmp_path / "cut", tiny_cache, steps=3))
    cut = train_voxelmorph(tiny_run(tiny_cohort, tmp_path / "cut", tiny_cache, steps=5, resume=True))
    a = {e["step"]: e["loss"] for e in train_log(full) if e["kind"] == "train"}
    b = {e["step"]: e["loss"] for e in train_log(cut) if e["kind"] == "train"}
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5]
    assert np.allclose([a[s] for s in a], [b[s] for s in a], atol=1e-5)
    assert [e["step"] for e in train_log(full) if e["kind"] == "val"] == [3, 5]
    last, config = load_voxelmorph_checkpoint(full / "last", "cpu")
    assert config["training"]["steps_done"] == 5 and config["training"]["val_subjects_ids"] == [
        "patient007", "patient008"]

    dest = tmp_path / "shipped"
    assert main(["--export", str(full / "best"), str(dest), "--note", "A short run."]) == 0
    exported, shipped = load_voxelmorph_checkpoint(dest, "cpu")
    best, best_config = load_voxelmorph_checkpoint(full / "best", "cpu")
    assert shipped["metrics"] == best_config["metrics"]
    assert all(torch.equal(exported.state_dict()[k], v) for k, v in best.state_dict().items())
    card = (dest / "README.md").read_text()
    assert "lambda = 1.5" in card and "Run: 5 steps" in card and "patient007 to patient008" in card
    assert card.startswith("# VoxelMorph baseline `shipped`") and 'load_voxelmorph("shipped")' in card
    assert f"{100 * best_config['metrics']['val_dice']:.2f} %" in card
    assert "lr 0.001 (VoxelMorph's default: 0.0001)" in card and card.endswith("## Notes\nA short run.\n")


def test_init_fine_tunes_from_a_checkpoint_with_the_same_options_only(tiny_cohort, tiny_cache, tmp_path):
    """--init starts from a checkpoint's weights (the fair baseline of issue 16: the CVAE's fine-tuning protocol)."""
    base = train_voxelmorph(tiny_run(tiny_cohort, tmp_path / "base", tiny_cache, steps=2))
    start, _ = load_voxelmorph_checkpoint(base / "last", "cpu")
    tuned = train_voxelmorph(tiny_run(tiny_cohort, tmp_path / "tuned", tiny_cache, steps=1, lr=1e-12,
                                      init=str(base / "last")))
    after, config = load_voxelmorph_checkpoint(tuned / "last", "cpu")
    # one step of a vanishing learning rate leaves Adam within lr of the start: the weights were loaded
    assert all(torch.allclose(after.state_dict()[k], v, atol=1e-9) for k, v in start.state_dict().items())
    assert config["training"]["init"] == str(base / "last")
    fresh = train_voxelmorph(tiny_run(tiny_cohort, tmp_path / "fresh", tiny_cache, steps=1, lr=1e-12, seed=5))
    other, _ = load_voxelmorph_checkpoint(fresh / "last", "cpu")
    assert not all(torch.allclose(other.state_dict()[k], v) for k, v in start.state_dict().items())
    wider = dataclasses.replace(tiny_run(tiny_cohort, tmp_path / "wider", tiny_cache, steps=1, init=str(base / "last")),
                                model=VoxelMorphConfig(image_size=TINY_SIZE, nb_features=(8, 8, 16)))
    with pytest.raises(ValueError, match=r"^--init .* was trained with nb_features=\(8, 8, 8\) \(this run: "
                                         r"\(8, 8, 16\)\); pass the same options$"):
        train_voxelmorph(wider)


def test_cli_bad_input_exits_2(tmp_path, capsys):
    assert main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")]) == 2
    assert main(["--export", str(tmp_path / "nowhere"), str(tmp_path / "dest")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("train_voxelmorph: ") for line in err)


def test_a_run_is_not_restarted_and_resume_puts_back_a_save_killed_between_its_renames(tiny_cohort, tiny_cache,
                                                                                        tmp_path):
    """The VoxelMorph trainer starts as the CVAE's (cvae.training.loop.check_run_folder)."""
    out = train_voxelmorph(tiny_run(tiny_cohort, tmp_path / "run", tiny_cache, steps=2))
    before = {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*")}
    with pytest.raises(ValueError, match=f"^--out {out} holds a run already: continue it with --resume"):
        train_voxelmorph(tiny_run(tiny_cohort, out, tiny_cache, steps=3))
    assert {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*")} == before
    os.replace(out / "last", out / ".last.tmp-killed")  # killed between the two renames of a save of last/
    train_voxelmorph(tiny_run(tiny_cohort, out, tiny_cache, steps=3, resume=True))
    assert [e["step"] for e in train_log(out) if e["kind"] == "train"] == [1, 2, 3]  # continued from step 2
    assert json.loads((out / "last" / "trainer.json").read_text())["step"] == 3
    assert sorted(p.name for p in out.iterdir()) == ["best", "last", "log.jsonl"]


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--steps", "-5"], "--steps must be >= 1, got -5"),
    (["--spacing", "1", "0", "1"], "--spacing must be three voxel sizes > 0 mm"),
    (["--out", "{file}"], "is a file: give a directory"),
])
def test_cli_bad_settings_and_out_are_refused_before_the_data_is_read(flags, message, tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    flags = [str(a_file) if flag == "{file}" else flag for flag in flags]
    assert main(["--data", str(tmp_path / "nonexistent"), "--out", str(tmp_path / "run"), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train_voxelmorph: error: ") and message in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
