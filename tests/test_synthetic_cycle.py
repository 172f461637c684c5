"""The synthetic cohort's whole cycle: ACDC-like timing, exact labels and maps of every frame, the side files."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import cvae.data.synthetic as synthetic
from cvae.data.acdc import load_subject, subject_info
from cvae.data.synthetic import ed_labels_at, make_subject, save_subject
from cvae.data.cycle_truth import DISPLACEMENT_STEP, load_cycle_truth
from cvae.data.synthetic_cycle import cycle_phase

FRAMES, ES = 7, 3


@pytest.fixture(scope="module")
def short_cycle(tmp_path_factory) -> tuple[synthetic.SyntheticSubject, Path]:
    """Testing subject 1 of seed 0 with its cycle shortened to 7 frames (ES 3) so that it renders in seconds, saved."""
    sample = synthetic.sample_subject
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(synthetic, "sample_subject",
                      lambda *a: dataclasses.replace(sample(*a), nb_frame=FRAMES, es_frame=ES))
        subject = make_subject("testing", 1, seed=0, cine=True)
    folder = save_subject(subject, tmp_path_factory.mktemp("cycle") / "testing", 1)
    return subject, folder


def test_phase_follows_an_acdc_like_volume_curve():
    nb, es = 30, 11
    phase = np.array([cycle_phase(t, nb, es) for t in range(1, nb + 1)])
    assert phase[0] == 0.0 and phase[es - 1] == 1.0
    assert np.all(np.diff(phase[:es]) > 0) and np.all(np.diff(phase[es - 1:]) <= 1e-12)  # ejection, then filling
    diastole = (np.arange(es, nb + 1) - es) / (nb + 1 - es)  # 0 at ES
    # rapid filling restores 75 % of the stroke volume in the first 35 % of diastole, diastasis holds it
    assert np.allclose(phase[es - 1:][(diastole >= 0.35) & (diastole <= 0.75)], 0.25)
    assert np.all(phase[es - 1:][diastole < 0.35] > 0.25)
    assert 0 < phase[-1] < 0.25 and phase[-1] < phase[-2]  # the atrial kick leads back into the next ED
    # filling is faster than ejection: half the stroke volume back in fewer frames than half of it ejected
    assert np.argmax(phase[es - 1:] <= 0.5) < np.argmax(phase[:es] >= 0.5)


def test_every_frame_is_the_ed_scene_pulled_back_by_its_exact_map(short_cycle):
    subject, _ = short_cycle
    p = subject.params
    assert subject.cine.shape == (*subject.ed_image.shape, FRAMES) and subject.cine.dtype == np.int16
    assert subject.cine_displacement.shape == (*subject.ed_image.shape, FRAMES, 3)
    assert np.array_equal(subject.cine[..., 0], subject.ed_image)
    assert np.array_equal(subject.cine[..., ES - 1], subject.es_image)
    assert np.array_equal(subject.cine_labels[..., ES - 1], subject.es_label)
    assert np.array_equal(subject.cine_displacement[..., ES - 1, :], subject.displacement)
    assert not subject.cine_displacement[..., 0, :].any()  # ED -> ED is the identity
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in subject.ed_label.shape), indexing="ij"))
    cavity = []
    for t in range(FRAMES):
        pulled = ed_labels_at(p, grid + np.moveaxis(subject.cine_displacement[..., t, :], -1, 0))
        assert np.array_equal(pulled, subject.cine_labels[..., t]), f"frame {t + 1}"
        cavity.append(int((subject.cine_labels[..., t] == 3).sum()))
    assert np.argmin(cavity) == ES - 1 and cavity[0] == max(cavity)
    # frames between ED and ES move less than ES does (the motion is scaled by the phase)
    norm = np.linalg.norm(subject.cine_displacement, axis=-1).max(axis=(0, 1, 2))
    assert norm[1] < norm[ES - 1] and norm[ES] < norm[ES - 1]


def test_side_files_round_trip_and_the_reader_ignores_them(short_cycle):
    subject, folder = short_cycle
    labels, displacement = load_cycle_truth(folder)
    assert np.array_equal(labels, subject.cine_labels)
    assert np.abs(displacement - subject.cine_displacement).max() <= DISPLACEMENT_STEP / 2 + 1e-5
    field = nib.load(str(folder / "patient001_4d_gt_displacement.nii.gz"))
    assert field.shape == (*subject.ed_image.shape, FRAMES, 3) and np.allclose(field.affine, subject.affine)
    cine = nib.load(str(folder / "patient001_4d.nii.gz"))
    assert cine.header.get_zooms()[3] == pytest.approx(60000.0 / subject.params.heart_rate / FRAMES, abs=1e-3)
    info = subject_info(folder, "testing")
    assert info.ed_image.name == "patient001_frame01.nii.gz" and info.es_frame == ES
    assert np.array_equal(load_subject(info).ed_label, subject.ed_label)


def test_missing_truth_is_a_one_line_error(tmp_path):
    folder = tmp_path / "patient007"
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match=r"patient007_4d_gt.nii.gz not found: .*cvae synth --cine"):
        load_cycle_truth(folder)
