"""The foreign phantom's whole cycle (`cvae synth --style foreign --cine`): its own timing, exact labels and maps of
every frame, the side files, and nothing else changed."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

import cvae.data.foreign as foreign
from cvae.cli import main as cvae_main
from cvae.data.cycle_truth import DISPLACEMENT_STEP, load_cycle_truth
from cvae.data.foreign_cycle import Timing, foreign_phase, scaled_motion
from cvae.data.synthetic_cycle import cycle_phase
from cvae.data.volumes import load_cine

FRAMES, ES, SEED = 7, 3, 5


@pytest.fixture(scope="module")
def short_cycle(tmp_path_factory) -> tuple[foreign.ForeignSubject, Path, Path]:
    """Testing subject 0 of seed 5 with its cycle shortened to 7 frames (ES 3), saved with and without its cine."""
    draw = foreign.draw_design
    root = tmp_path_factory.mktemp("foreign-cycle")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(foreign, "draw_design", lambda *a: dataclasses.replace(draw(*a), nb_frame=FRAMES, es_frame=ES))
        subject = foreign.make_foreign_subject("testing", 0, SEED, cine=True)
        plain = foreign.save_foreign_subject(foreign.make_foreign_subject("testing", 0, SEED), root / "plain", 1)
    return subject, foreign.save_foreign_subject(subject, root / "cine", 1), plain


def test_its_timing_is_its_own_and_cardiac():
    timing = Timing(steepness=1.8, early_share=0.7, tau=0.1, atrial_start=0.75, heart_rate=70.0)
    nb, es = 30, 11
    phase = np.array([foreign_phase(t, nb, es, timing) for t in range(1, nb + 1)])
    assert phase[0] == 0.0 and phase[es - 1] == 1.0
    assert np.all(np.diff(phase[:es]) > 0) and np.all(np.diff(phase[es - 1:]) < 0)  # ejection, then filling
    diastole = (np.arange(es, nb + 1) - es) / (nb + 1 - es)
    # early filling: 70 % of the stroke volume, most of it within three time constants; the atrial kick the rest
    t = np.argmax(diastole >= 0.3)  # three time constants into diastole
    early = (1 - np.exp(-diastole[t] / 0.1)) / (1 - np.exp(-10.0))
    assert phase[es - 1 + t] == pytest.approx(1 - 0.7 * early, abs=1e-12)
    assert 0 < phase[-1] < 0.3
    own = np.array([cycle_phase(t, nb, es) for t in range(1, nb + 1)])
    assert np.abs(phase - own).max() > 0.1  # not the own generator's curve
    with pytest.raises(ValueError, match="1 < es_frame < nb_frame"):
        foreign_phase(1, 10, 10, timing)


def test_the_motion_scales_from_the_identity_to_end_systole(short_cycle):
    subject, _, _ = short_cycle
    motion = foreign.draw_design(np.random.default_rng(0), "MINF").motion
    assert scaled_motion(motion, 1.0) is motion
    half = scaled_motion(motion, 0.5)
    assert half.lv_gain == 0.5 * motion.lv_gain and half.twist == (0.5 * motion.twist[0], 0.5 * motion.twist[1])
    assert half.infarct == motion.infarct and half.reach == motion.reach
    with pytest.raises(ValueError, match="alpha must be in"):
        scaled_motion(motion, 1.5)


def test_every_frame_is_the_ed_anatomy_carried_by_its_exact_map(short_cycle):
    subject, _, _ = short_cycle
    assert subject.cine.shape == (*subject.ed_image.shape, FRAMES) and subject.cine.dtype == np.int16
    assert np.array_equal(subject.cine[..., 0], subject.ed_image)
    assert np.array_equal(subject.cine[..., ES - 1], subject.es_image)
    assert np.array_equal(subject.cine_labels[..., ES - 1], subject.es_label)
    assert np.array_equal(subject.cine_displacement[..., ES - 1, :], subject.displacement)
    assert not subject.cine_displacement[..., 0, :].any()
    cavity = []
    for t in range(FRAMES):
        u = np.moveaxis(subject.cine_displacement[..., t, :].astype(np.float64), -1, 0)
        pulled = ndimage.map_coordinates(subject.ed_label, np.indices(u.shape[1:]) + u, order=0, mode="nearest")
        assert np.array_equal(pulled, subject.cine_labels[..., t]), f"frame {t + 1}"
        cavity.append(int((subject.cine_labels[..., t] == 3).sum()))
    assert np.argmin(cavity) == ES - 1 and cavity[0] == max(cavity)
    norm = np.linalg.norm(subject.cine_displacement, axis=-1).max(axis=(0, 1, 2))
    assert 0 < norm[1] < norm[ES - 1] and 0 < norm[-1] < norm[ES - 1]
    # intermediate frames are new acquisitions (own noise), not copies of ED or ES
    assert not np.array_equal(subject.cine[..., 1], subject.ed_image)


def test_side_files_round_trip_and_the_other_files_do_not_change(short_cycle):
    subject, folder, plain = short_cycle
    labels, displacement = load_cycle_truth(folder)
    assert np.array_equal(labels, subject.cine_labels)
    assert np.abs(displacement - subject.cine_displacement).max() <= DISPLACEMENT_STEP / 2 + 1e-5
    cine, affine, _, frame_ms = load_cine(folder / "patient001_4d.nii.gz")
    assert np.array_equal(cine, subject.cine) and np.allclose(affine, subject.affine)
    assert frame_ms == pytest.approx(1000 * subject.frame_seconds, abs=1e-3)
    assert 60_000 / 95 <= frame_ms * FRAMES <= 60_000 / 50  # one cycle at 50-95 beats per minute
    for path in plain.iterdir():
        assert (folder / path.name).read_bytes() == path.read_bytes(), path.name


def test_the_command_writes_foreign_cines(tmp_path, capsys, monkeypatch):
    draw = foreign.draw_design
    monkeypatch.setattr(foreign, "draw_design", lambda *a: dataclasses.replace(draw(*a), nb_frame=5, es_frame=2))
    out = tmp_path / "cines"
    assert cvae_main(["synth", "--style", "foreign", "--cine", "--out", str(out), "--n-train", "0", "--n-test", "1",
                      "--seed", "2", "--workers", "1"]) == 0
    assert "foreign" in capsys.readouterr().out
    labels, displacement = load_cycle_truth(out / "testing" / "patient001")
    assert labels.shape[3] == 5 and displacement.shape[3:] == (5, 3)
