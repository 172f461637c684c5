"""The Motion page with ``streamlit.testing.v1.AppTest`` on a cohort of three small cines and a small model (plus a
motion model trained on them for a few steps), and its cine sources called directly: a cohort cine, the synthetic
generator's rendering of a demo subject (cached on disk), uploads."""
from __future__ import annotations

import base64
import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from cvae.app import cine as K
from cvae.checkpoint import save_checkpoint
from cvae.data.acdc import find_subjects
from cvae.data.synthetic import make_subject
from cvae.data.volumes import load_nifti
from cvae.latent import encode_cohort
from cvae.motion.cycle import ejection_fraction

from conftest import (ACDC_SPACING, LATENT_SPACING, MOTION_FRAMES, acdc_affine, heart_label, latent_model,
                      motion_environment)

APP = str(Path(__file__).resolve().parent.parent / "app.py")
TIMEOUT = 120


@pytest.fixture(scope="module")
def motion_env(tmp_path_factory) -> dict[str, str]:
    return motion_environment(tmp_path_factory.mktemp("motion-env"))


@pytest.fixture
def env(motion_env, monkeypatch) -> dict[str, str]:
    for key, value in motion_env.items():
        monkeypatch.setenv(key, value)
    return motion_env


def open_motion() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.switch_page("pages/motion.py").run()
    return at


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def chart(at: AppTest, key: str) -> dict:
    """The Plotly figure of the chart with ``key``."""
    return json.loads(at.get_by_key(key).proto.spec)


def values(data) -> np.ndarray:
    """A Plotly array (a list, or a base64 typed array) as numpy."""
    if isinstance(data, dict):
        dtypes = {"f4": np.float32, "f8": np.float64, "u1": np.uint8, "i1": np.int8, "i4": np.int32, "i8": np.int64}
        return np.frombuffer(base64.b64decode(data["bdata"]), dtype=dtypes[data["dtype"]])
    return np.asarray(data, dtype=float)


def trace(figure: dict, name: str) -> dict:
    return next(t for t in figure["data"] if t.get("name") == name)


def nifti_bytes(data: np.ndarray, affine: np.ndarray | None = None) -> bytes:
    return gzip.compress(nib.Nifti1Image(data, acdc_affine() if affine is None else affine).to_bytes())


# ---------------------------------------------------------------------------------------------------------------
# the page


def test_motion_page_plays_tracks_and_measures_a_cohort_cine(env):
    at = open_motion()
    assert_clean(at)
    assert at.title[0].value == "Motion"
    assert at.selectbox(key="motion_subject").value == "patient001"  # the first DCM subject
    assert len(at.image) == 1  # the cine as acquired, playing (a GIF)
    animation = chart(at, "motion_animation")
    assert len(animation["frames"]) == MOTION_FRAMES
    steps = animation["layout"]["sliders"][0]["steps"]
    assert [s["label"] for s in steps][:1] == ["1 ED"] and len(steps) == MOTION_FRAMES
    assert [b["label"] for b in animation["layout"]["updatemenus"][0]["buttons"]] == ["▶ play", "❚❚ pause"]
    assert {t["name"] for t in animation["frames"][0]["data"]} >= {"frame", "warped ED", "LV cavity", "RV cavity"}
    curves = chart(at, "motion_curves")
    lv = values(trace(curves, "LV cavity")["y"])
    assert len(lv) == MOTION_FRAMES and values(trace(curves, "LV cavity")["x"]).tolist() == list(range(1, 11))
    es = trace(curves, "ES (detected)")
    assert es["x"] == [int(np.argmin(lv)) + 1] and es["y"] == [pytest.approx(lv.min())]
    assert trace(curves, "ED")["x"] == [1]
    # the ED volume is the ED segmentation's LV cavity, counted here on the cine's own grid (the page measures it
    # on the model's coarser grid)
    by_hand = (heart_label(radius=5.0) == 3).sum() * np.prod(ACDC_SPACING) / 1000
    assert lv[0] == pytest.approx(by_hand, rel=0.15)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["LVEF"] == f"{ejection_fraction(lv):.0f} %" and metrics["frames"] == str(MOTION_FRAMES)
    assert metrics["LVEDV"] == f"{lv[0]:.0f} mL"
    trajectory = chart(at, "motion_trajectory")
    assert len(values(trace(trajectory, "frames")["x"])) == MOTION_FRAMES
    assert not any(t["name"].startswith("cohort") for t in trajectory["data"])  # the cohort is not encoded yet
    # another view of the same cycle, then another subject
    at.button_group(key="motion_view").set_value("coronal").run()
    assert_clean(at)
    assert len(chart(at, "motion_animation")["frames"]) == MOTION_FRAMES
    at.selectbox(key="motion_subject").set_value("patient002").run()
    assert_clean(at)
    assert values(trace(chart(at, "motion_curves"), "LV cavity")["y"]).shape == (MOTION_FRAMES,)


def test_motion_page_simulates_from_ed_and_transports_onto_a_normal_heart(env):
    at = open_motion()
    assert not at.info  # the motion model is there
    at.select_slider(key="motion_samples").set_value(3)
    at.toggle(key="motion_simulate").set_value(True).run()
    assert_clean(at)
    curves = chart(at, "motion_curves")
    simulated = [values(t["y"]) for t in curves["data"] if t["name"].startswith("simulated LV cavity")]
    assert len(simulated) == 3 and all(len(v) == MOTION_FRAMES for v in simulated)
    tracked = values(trace(curves, "LV cavity")["y"])
    assert all(v[0] == pytest.approx(tracked[0]) for v in simulated)  # every cycle starts from the ED segmentation
    lvef = [ejection_fraction(v) for v in simulated]
    assert {m.label: m.value for m in at.metric}["LVEF, simulated from ED"] == f"{np.mean(lvef):.0f} %"
    paths = [t for t in chart(at, "motion_trajectory")["data"] if t["name"] == "simulated from ED"]
    assert len(paths) == 3 and len(values(paths[0]["x"])) == MOTION_FRAMES + 1  # closed cycles
    assert at.selectbox(key="motion_target").value == "patient002"  # the first NOR subject
    at.toggle(key="motion_transport").set_value(True).run()
    assert_clean(at)
    moved = chart(at, "motion_transport_curves")
    lv = values(trace(moved, "LV cavity (transported)")["y"])
    assert len(lv) == MOTION_FRAMES
    np.testing.assert_allclose(values(trace(moved, "LV cavity of patient001 (tracked)")["y"]), tracked)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["LVEF, transported"] == f"{ejection_fraction(lv):.0f} %"
    assert metrics["LVEF of patient002 (own ED, ES)"].endswith("%")


def test_motion_page_says_what_is_missing_in_one_line(env, monkeypatch, tmp_path):
    monkeypatch.setenv("CVAE_MOTION_CHECKPOINT", str(tmp_path / "no-motion-model"))
    at = open_motion()
    assert_clean(at)
    (info,) = at.info
    assert "is missing" in info.value and "`cvae train-motion --data" in info.value and "\n" not in info.value
    assert chart(at, "motion_curves") and chart(at, "motion_animation")  # the rest still works
    monkeypatch.setenv("CVAE_CHECKPOINT", "no-such-checkpoint")
    at.run()
    assert not at.exception
    assert len(at.error) == 1 and "not found" in at.error[0].value


def test_motion_page_checks_the_motion_model_against_the_checkpoint(env, tmp_path, monkeypatch):
    # another registration model of the same latent size: the motion model's codes are not its codes
    monkeypatch.setenv("CVAE_CHECKPOINT", str(save_checkpoint(tmp_path / "other", latent_model(seed=1),
                                                               spacing=LATENT_SPACING)))
    at = open_motion()
    assert_clean(at)
    (warning,) = at.warning
    assert f"learned the codes of `{env['CVAE_CHECKPOINT']}`, not of this checkpoint" in warning.value
    # a latent space of another size: one line, and the rest of the page still works
    monkeypatch.setenv("CVAE_CHECKPOINT", str(save_checkpoint(tmp_path / "wide", latent_model(latent_dim=4),
                                                               spacing=LATENT_SPACING)))
    at.run()
    assert not at.exception
    (error,) = at.error
    assert "models 3-D codes but the registration checkpoint has 4-D ones" in error.value and "\n" not in error.value
    assert chart(at, "motion_curves") and chart(at, "motion_trajectory")


def test_motion_page_draws_the_cycle_among_the_cohorts_codes(env, tmp_path, monkeypatch):
    monkeypatch.setenv("CVAE_CACHE", str(tmp_path / "cache"))
    table = encode_cohort(env["CVAE_CHECKPOINT"], env["CVAE_DATA"], "testing")  # what the Embedding page does
    at = open_motion()
    assert_clean(at)
    trajectory = chart(at, "motion_trajectory")
    assert {t["name"] for t in trajectory["data"] if t["name"].startswith("cohort")} == \
        {"cohort DCM", "cohort NOR", "cohort HCM"}
    assert any(c.value.startswith("PCA fitted on the codes of the cohort's 3 subjects") for c in at.caption)
    # the cohort's codes projected on the PCA of the cohort's codes: centred
    points = np.array([[values(t["x"])[0], values(t["y"])[0]] for t in trajectory["data"]
                       if t["name"].startswith("cohort")])
    assert len(table) == 3 and np.abs(points.mean(axis=0)).max() < 1e-6


def test_motion_page_refuses_bad_uploads_and_tracks_a_good_one(env):
    at = open_motion()
    at.radio(key="motion_source").set_value("upload a cine").run()
    assert_clean(at)
    assert any("Upload a cine" in i.value for i in at.info)
    folder = Path(env["CVAE_DATA"]) / "testing" / "patient003"
    cine = ("patient003_4d.nii.gz", (folder / "patient003_4d.nii.gz").read_bytes(), "application/gzip")
    ed_seg = ("ed_gt.nii.gz", (folder / "patient003_frame01_gt.nii.gz").read_bytes(), "application/gzip")
    frame = np.asarray(nib.load(str(folder / "patient003_4d.nii.gz")).dataobj)[..., 0]
    cases = [
        (("notes.txt", b"just text", "text/plain"), None, 1, "is not a NIfTI file"),
        (("frame.nii.gz", nifti_bytes(frame), "application/gzip"), None, 1, "a cine is 4-D"),
        (cine, ("small_gt.nii.gz", nifti_bytes(heart_label()[:20]), "application/gzip"), 1, "is not on the grid"),
        (cine, None, 11, "ED frame 11 is not one of the cine's frames 1-10"),
    ]
    for cine_upload, seg_upload, ed, message in cases:
        at.file_uploader(key="motion_upload_cine").set_value(cine_upload)
        at.file_uploader(key="motion_upload_seg").set_value(seg_upload)
        at.number_input(key="motion_upload_ed").set_value(ed)
        at.form_submit_button(key="motion_upload_submit").click().run()
        assert not at.exception, [e.value for e in at.exception]
        errors = [e.value for e in at.error]
        assert len(errors) == 1 and message in errors[0] and "\n" not in errors[0], (message, errors)
    at.number_input(key="motion_upload_ed").set_value(1)
    at.form_submit_button(key="motion_upload_submit").click().run()  # no segmentation: the motion, not volumes
    assert_clean(at)
    motion = values(trace(chart(at, "motion_curves"), "mean displacement")["y"])
    assert len(motion) == MOTION_FRAMES and not any(m.label == "LVEF" for m in at.metric)
    assert trace(chart(at, "motion_curves"), "ES (detected)")["x"] == [int(np.argmax(motion)) + 1]
    at.file_uploader(key="motion_upload_seg").set_value(ed_seg)
    at.form_submit_button(key="motion_upload_submit").click().run()
    assert_clean(at)
    assert len(values(trace(chart(at, "motion_curves"), "LV cavity")["y"])) == MOTION_FRAMES
    assert any("Uploaded `patient003_4d.nii.gz` with `ed_gt.nii.gz`" in c.value for c in at.caption)


# ---------------------------------------------------------------------------------------------------------------
# where a demo subject's cycle comes from


def test_synthetic_identity_follows_how_make_cohort_numbers_subjects(tiny_cohort, tmp_path):
    # tiny_cohort: 8 training subjects (patient001-008), then 5 test subjects numbered on (patient009-013)
    assert K.synthetic_identity(tiny_cohort / "training" / "patient003") == ("training", 2)
    assert K.synthetic_identity(tiny_cohort / "testing" / "patient010") == ("testing", 1)
    linked = tmp_path / "testing" / "patient001"  # the app's test cohort links subjects under another split
    linked.parent.mkdir()
    linked.symlink_to(tiny_cohort / "training" / "patient004", target_is_directory=True)
    assert K.synthetic_identity(linked) == ("training", 3)
    ed = load_nifti(tiny_cohort / "testing" / "patient010" / "patient010_frame01.nii.gz")[0]
    assert np.array_equal(make_subject("testing", 1, K.SYNTHETIC_SEED).ed_image.astype(np.float32), ed)
    with pytest.raises(ValueError, match="not a patientNNN folder of a training/ or testing/ split"):
        K.synthetic_identity(tmp_path / "cases" / "patient001")


def test_a_demo_subject_without_cine_is_rendered_once_then_read_from_the_cache(tiny_cohort, isolated_cache,
                                                                               tmp_path, monkeypatch):
    """The generator's cycle (replaced here by one of 4 frames built from its ED and ES frames, to keep the test
    fast) is checked against the folder, cached under the cache folder and read back without rendering; a folder
    that is not the generator's subject is refused in one line."""
    calls = []

    def quick_subject(split: str, index: int, seed: int, cine: bool = False):
        calls.append((split, index, seed, cine))
        subject = make_subject(split, index, seed)
        if cine:
            subject.cine = np.stack([subject.ed_image, subject.es_image, subject.es_image, subject.ed_image], -1)
        return subject

    monkeypatch.setattr(K, "make_subject", quick_subject)
    info = next(i for i in find_subjects(tiny_cohort, "testing") if i.subject == "patient009")
    assert K.needs_rendering(info)
    first = K.cohort_cine(tiny_cohort, "patient009")
    assert calls == [("testing", 0, 0, False), ("testing", 0, 0, True)]
    assert K.rendered_path(info).parent == isolated_cache / "cines" and not K.needs_rendering(info)
    assert first.frames == 4 and first.ed_frame == 1 and first.ed_label is not None
    assert "rendered by the synthetic generator (testing subject 0, seed 0" in first.origin
    again = K.cohort_cine(tiny_cohort, "patient009")
    assert len(calls) == 2 and np.array_equal(again.images, first.images)
    np.testing.assert_allclose(again.affine, first.affine)
    # the same images under another number: the mapping points to another subject, whose ED differs
    other = tmp_path / "copy" / "testing" / "patient100"
    shutil.copytree(tiny_cohort / "testing" / "patient010", other)
    for path in other.iterdir():
        path.rename(other / path.name.replace("patient010", "patient100"))
    with pytest.raises(ValueError, match="patient100 has no cine and its ED image is not that of the synthetic "
                                         "generator's testing subject 0") as error:
        K.cohort_cine(other.parent.parent, "patient100")
    assert "\n" not in str(error.value)


@pytest.mark.slow
def test_the_rendered_cycle_holds_the_folders_ed_and_es_frames(tiny_cohort, isolated_cache):
    cine = K.cohort_cine(tiny_cohort, "patient011")
    info = next(i for i in find_subjects(tiny_cohort, "testing") if i.subject == "patient011")
    assert cine.frames == info.nb_frame and cine.es_frame == info.es_frame
    for frame, path in ((info.ed_frame, info.ed_image), (info.es_frame, info.es_image)):
        np.testing.assert_array_equal(cine.images[..., frame - 1], load_nifti(path)[0])
