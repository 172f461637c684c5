"""The motion model: temporal dropout, learning a family of cycles, interpolation baselines, the cycle operations."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cvae.checkpoint import save_checkpoint
from cvae.commands.train_motion import main
from cvae.model import CVAERegistration, ModelConfig
from cvae.motion.cycle import cycle_volumes, ejection_fraction, interpolate, load_motion_model, simulate
from cvae.motion.cycles import Cycle, load_cycles, save_cycles
from cvae.motion.evaluate import endpoint_error_mm, interpolate_fields, roughness, smooth_codes
from cvae.motion.model import MotionConfig, MotionModel, temporal_dropout
from cvae.motion.train import MotionTraining, train_motion

from conftest import TINY_MODEL, TINY_SPACING, as_cine_only, latent_model, write_patient

SMALL = MotionConfig(latent_dim=3, hidden=24, levels=3, context=4, style=2)
ED_SHAPE = (16, 16, 8)


def family(n: int, seed: int) -> list[Cycle]:
    """Cycles of 10-16 frames whose codes follow ``a * (1 - cos(2 pi phase)) / 2`` per dimension (zero at ED), the
    amplitude ``a`` written into the ED image's brightness, so that the ED frame tells the motion."""
    rng = np.random.default_rng(seed)
    cycles = []
    for k in range(n):
        frames = int(rng.integers(10, 17))
        scale = float(rng.uniform(0.5, 2.0))
        shape = 0.5 * (1 - np.cos(2 * np.pi * np.arange(frames) / frames))
        codes = scale * shape[:, None] * np.array([1.0, -0.5, 0.25])
        cycles.append(Cycle(f"patient{k:03d}", "NOR", codes.astype(np.float32),
                            np.full(ED_SHAPE, scale / 2, np.float32), es_frame=frames // 2 + 1))
    return cycles


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[MotionModel, list[Cycle]]:
    folder = tmp_path_factory.mktemp("motion") / "model"
    cycles = family(40, seed=0)
    metrics = train_motion(cycles, folder, MotionTraining(steps=400, batch=4, validation=8), SMALL, log=lambda _: None)
    assert metrics["train_cycles"] == 32 and metrics["best_step"] > 0
    model, config = load_motion_model(folder, "cpu")
    assert config["model"] == SMALL.to_dict() and config["metrics"] == metrics
    return model, family(10, seed=1)


def test_temporal_dropout_always_keeps_ed_and_drops_at_the_asked_rates():
    gen = torch.Generator().manual_seed(0)
    masks = torch.stack([temporal_dropout(20, gen, ed_frame=3, ed_only=0.25, keep=(0.2, 0.9)) for _ in range(4000)])
    assert masks[:, 2].all()
    others = torch.cat([masks[:, :2], masks[:, 3:]], dim=1).float()
    ed_only = (others.sum(dim=1) == 0).float().mean()
    assert abs(float(ed_only) - 0.25) < 0.03  # (a kept rate of 0.2 over 19 frames leaves none only 1.4 % of the time)
    assert abs(float(others.mean()) - 0.75 * 0.55) < 0.02


def test_interpolation_baselines_on_hand_made_cycles():
    frames = 12
    t = np.arange(frames, dtype=np.float32)
    linear = np.broadcast_to(t.reshape(-1, 1, 1, 1, 1), (frames, 3, 2, 2, 2)).copy()
    observed = np.zeros(frames, bool)
    observed[[0, 3, 7]] = True
    out = interpolate_fields(linear, observed, "linear")
    inside = np.arange(frames)[(np.arange(frames) > 0) & (np.arange(frames) < 7)]
    assert np.allclose(out[inside], linear[inside])  # exact between observed frames
    assert np.allclose(out[observed], linear[observed])
    # across the cycle's end: frame 7 (value 7) back to frame 0 (value 0) twelve frames later, 5 steps
    assert np.allclose(out[9, 0, 0, 0, 0], 7 + (9 - 7) * (0 - 7) / 5)
    wave = np.sin(2 * np.pi * t / frames).reshape(-1, 1, 1, 1, 1).repeat(3, axis=1)
    every_second = np.arange(frames) % 2 == 0
    errors = {kind: np.abs(interpolate_fields(wave, every_second, kind) - wave).max() for kind in ("linear", "cubic")}
    assert errors["cubic"] < errors["linear"] / 5
    with pytest.raises(ValueError, match="at least 2 observed"):
        interpolate_fields(wave, np.eye(1, frames, dtype=bool)[0])


def test_the_model_learns_the_family_and_beats_linear_interpolation_of_codes(trained):
    model, held_out = trained
    model_error, linear_error = [], []
    for cycle in held_out:
        observed = np.arange(cycle.frames) % 2 == 0
        predicted = interpolate(model, cycle.codes, observed, cycle.ed)
        assert np.array_equal(predicted[observed], cycle.codes[observed])  # observed frames are kept exactly
        linear = interpolate_fields(cycle.codes[:, :, None, None, None], observed)[:, :, 0, 0, 0]
        model_error.append(np.abs(predicted - cycle.codes)[~observed].mean())
        linear_error.append(np.abs(linear - cycle.codes)[~observed].mean())
    assert np.mean(model_error) < 0.7 * np.mean(linear_error)


def test_simulated_cycles_follow_the_anatomy(trained):
    """From the ED frame alone the cycle's amplitude comes from the ED image: the peak code grows with it."""
    model, held_out = trained
    registration = latent_model(latent_dim=3)
    ed_large, ed_small = (np.full(ED_SHAPE, v, np.float32) for v in (0.9, 0.3))
    # the ED code of simulate() comes from the registration model; replace it by the family's (zero motion)
    codes = np.zeros((14, 3), np.float32)
    peaks = []
    for ed in (ed_large, ed_small):
        out = model.complete(codes, np.eye(1, 14, dtype=bool)[0], torch.from_numpy(ed)[None, None], samples=4, seed=0)
        assert out.shape == (4, 14, 3)
        peaks.append(out[:, 7, 0].mean())
    assert peaks[0] > peaks[1] + 0.5  # amplitude 1.8 vs 0.6 at mid-cycle
    again = model.complete(codes, np.eye(1, 14, dtype=bool)[0], torch.from_numpy(ed_small)[None, None], 4, seed=0)
    assert np.array_equal(again[:, :, :], model.complete(codes, np.eye(1, 14, dtype=bool)[0],
                                                          torch.from_numpy(ed_small)[None, None], 4, seed=0))
    image = np.full((24, 24, 8), 0.5, np.float32)
    simulated = simulate(model, registration, image, frames=9, n=2, seed=1)
    assert simulated.shape == (2, 9, 3)
    with pytest.raises(ValueError, match="observed frame 12 is not one of the frames 1-9"):
        simulate(model, registration, image, frames=9, observed={12: np.zeros(3)})
    with pytest.raises(ValueError, match=r"codes must be \(T, 3\)"):
        interpolate(model, np.zeros((5, 4)), np.ones(5, bool), held_out[0].ed)


def test_smoothing_pulls_an_outlier_frame_back_to_the_cycle(trained):
    model, held_out = trained
    cycle = held_out[0]
    noisy = cycle.codes.copy()
    noisy[5] += np.array([1.5, 0.0, 0.0], np.float32)
    smoothed = smooth_codes(model, noisy, cycle.ed)
    assert np.array_equal(smoothed[0], noisy[0])
    assert abs(smoothed[5, 0] - cycle.codes[5, 0]) < 0.75 * 1.5


def test_volumes_roughness_and_errors_by_hand(tmp_path):
    label = np.zeros((10, 10, 6), np.uint8)
    label[3:7, 3:7, 1:5] = 3  # 64 voxels of LV cavity
    fields = np.zeros((4, 3, 10, 10, 6), np.float32)
    fields[2, 0, 5:8] = 1.0  # frame 3: rows x = 5-7 sample x + 1, so cavity row 6 samples row 7 (background)
    volumes = cycle_volumes(fields, label, (2.0, 2.0, 2.5))
    voxel_ml = 2 * 2 * 2.5 / 1000
    assert np.allclose(volumes["LV cavity"], np.array([64, 64, 48, 64]) * voxel_ml)
    fields[0] = 5.0  # the ED frame keeps its own labels whatever the field
    assert cycle_volumes(fields, label, (2.0, 2.0, 2.5))["LV cavity"][0] == pytest.approx(64 * voxel_ml)
    assert ejection_fraction(np.array([100.0, 60.0, 40.0, 80.0])) == pytest.approx(60.0)
    assert roughness(np.array([1.0, 2.0, 3.0, 2.0])) == pytest.approx(1.0)  # circular second differences 2, 0, -2, 0
    truth = np.zeros_like(fields)
    mask = label > 0
    errors = endpoint_error_mm(fields, truth, mask, np.array([2.0, 2.0, 2.5]))
    assert errors[2] == pytest.approx(1.0) and errors[1] == 0  # half the mask moved 1 voxel of 2 mm
    cycles = family(3, seed=2)
    loaded = load_cycles(save_cycles(tmp_path / "cycles.npz", cycles))
    assert [c.subject for c in loaded] == [c.subject for c in cycles]
    assert all(np.array_equal(a.codes, b.codes) and np.allclose(a.ed, b.ed, atol=1e-3) for a, b in zip(loaded, cycles))
    assert math.isnan(ejection_fraction(np.zeros(3)))


def test_train_motion_tracks_the_cines_once_and_writes_a_checkpoint_with_a_card(tmp_path, capsys):
    cohort = tmp_path / "cohort" / "training"
    for number in range(1, 5):
        as_cine_only(write_patient(cohort, number, es=5, seed=number), frames=8)
    torch.manual_seed(0)
    registration = save_checkpoint(tmp_path / "tiny", CVAERegistration(ModelConfig(**TINY_MODEL)), spacing=TINY_SPACING)
    cache, out = tmp_path / "cycles.npz", tmp_path / "motion"
    args = ["--data", str(tmp_path / "cohort"), "--checkpoint", str(registration), "--cycles", str(cache), "--steps",
            "3", "--validation", "1", "--no-progress"]
    assert main([*args, "--out", str(out)]) == 0
    assert "trained the motion model on 3 cycles" in capsys.readouterr().out
    cycles = load_cycles(cache)
    assert [c.frames for c in cycles] == [8] * 4 and cycles[0].ed.shape == TINY_MODEL["image_size"]
    assert cycles[0].codes.shape == (8, ModelConfig().latent_dim) and cycles[0].es_frame == 5
    model, config = load_motion_model(out, "cpu")
    assert config["training"]["cycles"] == 4 and config["metrics"]["train_cycles"] == 3
    assert "motion model" in (out / "README.md").read_text()
    # the cache is read: the cohort is not needed again
    for path in sorted(cohort.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    assert main([*args, "--out", str(tmp_path / "again")]) == 0
    write_patient(cohort, 9)  # frames, no cine
    assert main(["--data", str(tmp_path / "cohort"), "--checkpoint", str(registration), "--out",
                 str(tmp_path / "x"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has a cine patientNNN_4d.nii.gz" in err[0]


def test_circular_padding_wraps_cycles_shorter_than_the_receptive_field():
    from torch.nn import functional as F

    from cvae.motion.model import _Block
    torch.manual_seed(0)
    block = _Block(4, 3, dilation=8)
    long = torch.randn(1, 4, 20)
    expected = long + block.mix(F.gelu(block.conv(F.pad(long, (8, 8), mode="circular"))))
    assert torch.allclose(block(long), expected, atol=1e-6)
    short = torch.randn(1, 4, 3)  # padding 8 wraps a 3-frame cycle almost three times
    rolled = block(torch.roll(short, 1, dims=2))
    assert torch.allclose(rolled, torch.roll(block(short), 1, dims=2), atol=1e-6)  # still a circular convolution
    model = MotionModel(MotionConfig(latent_dim=3))
    out = model.complete(np.zeros((3, 3)), np.array([True, False, False]), torch.zeros(1, 1, 16, 16, 8))
    assert out.shape == (3, 3)
