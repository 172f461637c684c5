"""The Streamlit app, page by page, with ``streamlit.testing.v1.AppTest`` (no browser), on a small synthetic cohort
and a randomly initialised paper-sized checkpoint; plus the computations of ``cvae.app`` called directly."""
from __future__ import annotations

import base64
import gzip
import io
import json
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from streamlit.testing.v1 import AppTest

from cvae.app import cached as C
from cvae.app import checkpoints as K
from cvae.app import cohort as H
from cvae.app import compute, export
from cvae.app import widgets as W
from cvae.checkpoint import save_checkpoint
from cvae.data.acdc import find_subjects
from cvae.data.dataset import PairDataset
from cvae.data.labels import STRUCTURES
from cvae.evaluation.evaluate import write_results
from cvae.evaluation.metrics import structure_scores
from cvae.latent.refine import refine_code
from cvae.model import CVAERegistration

from conftest import TINY_MODEL, TINY_SIZE, TINY_SPACING

APP = str(Path(__file__).resolve().parent.parent / "app.py")
TIMEOUT = 180


def app_environment(folder: Path, tiny_cohort: Path) -> dict[str, str]:
    """Environment variables pointing the app at a cohort and a randomly initialised 128 x 128 x 32 checkpoint.

    The cohort is the session's ``tiny_cohort`` (conftest) with all 13 subjects linked under ``testing/``: every
    group has at least 2 subjects, as the classification needs.
    """
    cohort = folder / "cohort" / "testing"
    cohort.mkdir(parents=True)
    for patient in sorted(tiny_cohort.glob("*/patient*")):
        (cohort / patient.name).symlink_to(patient, target_is_directory=True)
    torch.manual_seed(0)
    checkpoint = save_checkpoint(folder / "random-checkpoint", CVAERegistration(),
                                 training={"note": "random weights, for the app tests"})
    return {"CVAE_DATA": str(cohort.parent), "CVAE_CHECKPOINT": str(checkpoint), "CVAE_CACHE": str(folder / "cache"),
            "CVAE_RESULTS": str(folder / "results")}


@pytest.fixture(scope="session")
def app_env(tmp_path_factory, tiny_cohort) -> dict[str, str]:
    return app_environment(tmp_path_factory.mktemp("app-env"), tiny_cohort)


@pytest.fixture
def env(app_env, monkeypatch) -> dict[str, str]:
    for key, value in app_env.items():
        monkeypatch.setenv(key, value)
    return app_env


def open_page(page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    if page is not None:
        at.switch_page(f"pages/{page}.py").run()
    return at


def assert_clean(at: AppTest) -> None:
    """No uncaught exception and no error message in the page."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def trace_z(chart: dict, name: str, key: str = "z") -> np.ndarray:
    """The ``z`` (or ``key``) of the trace called ``name`` (decoding Plotly's base64 typed arrays)."""
    trace = next(t for t in chart["data"] if t.get("name") == name)
    z = trace[key]
    if isinstance(z, dict):
        dtype = {"f4": np.float32, "f8": np.float64, "u1": np.uint8, "i1": np.int8}[z["dtype"]]
        array = np.frombuffer(base64.b64decode(z["bdata"]), dtype=dtype)
        shape = z.get("shape")
        return array.reshape([int(n) for n in str(shape).split(",")]) if shape is not None else array
    return np.asarray(z, dtype=float)


def nifti_bytes(data: np.ndarray, gz: bool = True) -> bytes:
    raw = nib.Nifti1Image(data, np.diag([1.5, 1.5, 8.0, 1.0])).to_bytes()
    return gzip.compress(raw) if gz else raw


# ---------------------------------------------------------------------------------------------------------------
# pages


def test_home_shows_the_method_checkpoint_cohort_and_links(env):
    at = open_page()
    assert_clean(at)
    assert "probabilistic registration" in at.title[0].value
    markdown = " ".join(m.value for m in at.markdown)
    assert "latent code: **16** dimensions" in markdown and "128 × 128 × 32" in markdown
    counts = at.dataframe[0].value
    assert int(counts.to_numpy().sum()) == 13 and list(counts.columns) == ["NOR", "DCM", "HCM", "MINF", "RV"]
    assert len(at.get("page_link")) == 5
    assert len(charts(at)) == 1  # the method figure
    assert at.selectbox(key="checkpoint").value == env["CVAE_CHECKPOINT"]
    assert not any("labels in the loss" in c.value for c in at.caption)


def test_home_says_when_a_checkpoint_was_fine_tuned_with_labels(env, monkeypatch, tmp_path):
    tuned = save_checkpoint(tmp_path / "tuned", CVAERegistration(),
                            training={"init": "synthetic-acdc", "seg_weight": 80000.0, "steps_done": 900})
    monkeypatch.setenv("CVAE_CHECKPOINT", str(tuned))
    at = open_page()
    assert_clean(at)
    captions = [c.value for c in at.caption]
    assert any(c.startswith("fine-tuned from `synthetic-acdc` · 900 training steps") for c in captions), captions
    assert any("labels in the loss (Dice weight 80000)" in c for c in captions), captions


def test_register_page_registers_shows_metrics_and_follows_the_slice_slider(env):
    at = open_page("register")
    assert_clean(at)
    subject = at.selectbox(key="register_subject").value
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["folding (det J ≤ 0)"].endswith("%") and metrics["mean Dice"].endswith("%")
    table = at.dataframe[0].value
    assert list(table["structure"]) == [*STRUCTURES, "mean"]
    # a random network barely moves anything: Dice after registration ~ Dice before
    assert np.allclose(table["Dice after (%)"], table["Dice before (%)"], atol=1.0)
    (figure,) = charts(at)
    assert {t["name"] for t in figure["data"] if t["type"] == "heatmap"} >= {"fixed", "det J", "|u|"}
    slider = at.slider(key="register_slice_axial")
    assert slider.value == 16 and slider.max == 31
    slider.set_value(5).run()
    assert_clean(at)
    (moved,) = charts(at)
    assert not np.array_equal(trace_z(moved, "fixed"), trace_z(figure, "fixed"))
    assert at.selectbox(key="register_subject").value == subject
    assert len(at.get("download_button")) == 1
    at.select_slider(key="register_refine").set_value(10).run()
    assert_clean(at)
    assert any("Code refined by 10 gradient steps" in c.value for c in at.caption)


def test_register_page_refuses_bad_uploads_with_a_message(env):
    at = open_page("register")
    at.radio(key="register_source").set_value("upload NIfTI files").run()
    assert_clean(at)
    assert any("Upload a fixed and a moving image" in i.value for i in at.info)
    volume = np.random.default_rng(0).random((40, 36, 8)).astype(np.float32)
    cases = [
        (("notes.txt", b"just text", "text/plain"), "is not a NIfTI file"),
        (("cine.nii.gz", nifti_bytes(np.stack([volume] * 3, axis=-1)), "application/gzip"), "4-D"),
        (("flat.nii.gz", nifti_bytes(volume[:, :, 0]), "application/gzip"), "3-D volume"),
        (("small.nii.gz", nifti_bytes(volume[:30]), "application/gzip"), "different sizes"),
        (("nan.nii", nifti_bytes(np.where(volume > 0.99, np.nan, volume).astype(np.float32), gz=False),
          "application/octet-stream"), "NaN"),
    ]
    for upload, message in cases:
        at.file_uploader(key="upload_fixed").set_value(("es.nii.gz", nifti_bytes(volume), "application/gzip"))
        at.file_uploader(key="upload_moving").set_value(upload)
        at.button[0].click().run()
        assert not at.exception, [e.value for e in at.exception]
        errors = [e.value for e in at.error]
        assert len(errors) == 1 and message in errors[0] and "\n" not in errors[0], (message, errors)
    # the rest of the app still works
    at.switch_page("pages/transport.py").run()
    assert_clean(at)


def test_register_page_registers_an_uploaded_pair(env):
    at = open_page("register")
    at.radio(key="register_source").set_value("upload NIfTI files").run()
    cohort = Path(env["CVAE_DATA"]) / "testing" / "patient001"
    frames = sorted(p for p in cohort.glob("patient001_frame??.nii.gz"))
    at.file_uploader(key="upload_fixed").set_value((frames[1].name, frames[1].read_bytes(), "application/gzip"))
    at.file_uploader(key="upload_moving").set_value((frames[0].name, frames[0].read_bytes(), "application/gzip"))
    at.button[0].click().run()
    assert_clean(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["mean Dice"] == "n/a"  # no segmentations uploaded
    assert len(charts(at)) == 1


def test_latent_walk_sliders_change_the_decoded_deformation(env):
    at = open_page("latent_walk")
    assert_clean(at)
    z_sliders = [s for s in at.slider if s.key and s.key.startswith("walk_z_")]
    assert len(z_sliders) == 16
    mu = np.array([s.value for s in z_sliders])
    before = charts(at)[0]
    at.slider(key="walk_z_0").set_value(2.5).run()
    assert_clean(at)
    after = charts(at)[0]
    assert not np.array_equal(trace_z(after, "|u|"), trace_z(before, "|u|"))
    at.button[2].click().run()  # sample from the prior
    prior = np.array([at.slider(key=f"walk_z_{i}").value for i in range(16)])
    assert not np.allclose(prior, mu)
    at.button[3].click().run()  # sample like the cohort: a code drawn from the fit of the cohort's codes
    assert_clean(at)
    like_cohort = np.array([at.slider(key=f"walk_z_{i}").value for i in range(16)])
    assert not np.allclose(like_cohort, prior) and not np.allclose(like_cohort, mu)
    at.button[0].click().run()  # reset to mu
    np.testing.assert_allclose([at.slider(key=f"walk_z_{i}").value for i in range(16)], mu)
    metric_labels = [m.label for m in at.metric]
    assert "LV ejection fraction" in metric_labels


def test_latent_walk_animation_and_uncertainty(env):
    at = open_page("latent_walk")
    at.select_slider(key="walk_anim_frames").set_value(5)
    at.toggle(key="walk_anim_on").set_value(True)
    at.select_slider(key="walk_k").set_value(4)
    at.toggle(key="walk_unc_on").set_value(True).run()
    assert_clean(at)
    animation = next(c for c in charts(at) if c.get("frames"))
    assert len(animation["frames"]) == 5 and len(animation["layout"]["sliders"][0]["steps"]) == 5
    uncertainty = next(c for c in charts(at) if any(t.get("name") == "std" for t in c["data"]))
    assert np.all(trace_z(uncertainty, "std") >= 0)


def test_transport_compares_source_target_and_simulation(env):
    at = open_page("transport")
    assert_clean(at)
    source, target = at.selectbox(key="transport_source"), at.selectbox(key="transport_target")
    assert source.value != target.value
    table = at.dataframe[0].value
    assert len(table) == 3
    # the simulated ES starts from the target's own ED segmentation
    assert table["LVEDV"].iloc[2] == pytest.approx(table["LVEDV"].iloc[1])
    (figure,) = charts(at)
    assert len([t for t in figure["data"] if t["type"] == "heatmap"]) == 5
    other = next(o for o in source.options if o != source.value and o != target.value)
    source.set_value(other).run()
    assert_clean(at)
    assert at.dataframe[0].value.index[0] != table.index[0]


def test_transport_group_table_is_computed_on_request_then_cached(env):
    at = open_page("transport")
    assert not C.transport_study_cached(env["CVAE_CHECKPOINT"], env["CVAE_DATA"])
    assert len(charts(at)) == 1  # the images only, until the button
    at.button(key="transport_table_run").click().run()
    assert_clean(at)
    matrix = next(c for c in charts(at) if c["data"][0].get("texttemplate"))
    groups = ["NOR", "DCM", "HCM", "MINF", "RV"]
    assert matrix["data"][0]["x"] == groups and matrix["data"][0]["y"] == groups
    assert trace_z(matrix, "LVEF").shape == (5, 5)
    assert np.isfinite(trace_z(matrix, "LVEF")[~np.eye(5, dtype=bool)]).all()  # self pairs only on the diagonal
    assert C.transport_study_cached(env["CVAE_CHECKPOINT"], env["CVAE_DATA"])
    again = open_page("transport")  # a new session reads the table from disk, no button
    assert_clean(again)
    assert len(charts(again)) == 2


def test_embedding_projects_classifies_and_opens_a_subject(env):
    at = open_page("embedding")
    assert_clean(at)
    scatter = charts(at)[0]
    points = sum(trace_z(scatter, t["name"], "x").size for t in scatter["data"])
    assert {t["name"] for t in scatter["data"]} == {"NOR", "DCM", "HCM", "MINF", "RV"} and points == 13
    labels = [m.label for m in at.metric]
    assert any(label.startswith("leak-free accuracy") for label in labels) and "paper's protocol (leaky)" in labels
    at.get("button_group")[0].set_value("pca").run()
    assert_clean(at)
    assert charts(at)[0]["layout"]["xaxis"]["title"]["text"] == "PC 1"
    subject = at.selectbox(key="embedding_pick").options[3]
    at.selectbox(key="embedding_pick").set_value(subject)
    next(b for b in at.button if "Register" in b.label).click().run()
    assert_clean(at)
    assert at.title[0].value == "Register"
    assert at.selectbox(key="register_subject").value == subject


def test_benchmark_reads_results_and_runs_a_small_evaluation(env):
    at = open_page("benchmark")
    assert_clean(at)
    assert any("No evaluation results" in i.value for i in at.info)
    rng = np.random.default_rng(0)
    rows = [{"subject": f"patient{s:03d}", "group": "NOR", "method": method, "structure": structure,
             "dice": rng.uniform(0.5, 0.9), "hd95": rng.uniform(3, 12), "rmse": 0.1,
             "negative_jacobian_fraction": 0.0, "mean_displacement_mm": 1.0, "mean_gradient_norm": 0.1,
             "seconds": {"cvae": 0.3, "demons": 40.0}[method]}
            for s in range(1, 4) for method in ("cvae", "demons") for structure in STRUCTURES]
    write_results(pd.DataFrame(rows), Path(env["CVAE_RESULTS"]), "test results")
    at.run()
    assert_clean(at)
    summary = at.dataframe[0].value
    assert list(summary.index) == ["cvae", "demons"] and list(summary["cases"]) == [3, 3]
    dice = charts(at)[0]
    at.get("button_group")[0].set_value("hd95").run()
    assert charts(at)[0] != dice
    at.multiselect(key="benchmark_methods").set_value(["identity"])
    next(b for b in at.button if b.label == "Run the evaluation").click().run()
    assert_clean(at)
    quick = pd.read_csv(Path(env["CVAE_RESULTS"]) / "app-limit5" / "cases.csv")
    assert set(quick["method"]) == {"identity"} and quick["subject"].nunique() == 5
    assert "quick run" in at.radio(key="benchmark_folder").value


# ---------------------------------------------------------------------------------------------------------------
# bad set-ups: a friendly message, never a traceback


def test_missing_checkpoint_gives_a_message_and_the_app_still_works(env, monkeypatch):
    monkeypatch.setenv("CVAE_CHECKPOINT", "no-such-checkpoint")
    at = open_page()
    assert not at.exception
    assert len(at.error) == 1 and "checkpoint 'no-such-checkpoint' not found" in at.error[0].value
    assert int(at.dataframe[0].value.to_numpy().sum()) == 13  # the cohort card still works
    for page in ("register", "latent_walk", "transport", "embedding"):
        at.switch_page(f"pages/{page}.py").run()
        assert not at.exception
        assert any("not found" in e.value for e in at.error), page


def test_corrupt_checkpoint_and_empty_cohort_give_messages(env, tmp_path, monkeypatch):
    broken = tmp_path / "broken"
    save_checkpoint(broken, CVAERegistration(**TINY_MODEL), spacing=TINY_SPACING)
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    empty = tmp_path / "empty-cohort"
    empty.mkdir()
    monkeypatch.setenv("CVAE_CHECKPOINT", str(broken))
    monkeypatch.setenv("CVAE_DATA", str(empty))
    at = open_page()
    assert not at.exception
    assert any("No patient folders" in e.value for e in at.error)
    at.switch_page("pages/register.py").run()
    assert not at.exception and len(at.error) == 1 and "no patient folders" in at.error[0].value
    monkeypatch.setenv("CVAE_DATA", env["CVAE_DATA"])
    at.run()
    assert not at.exception and len(at.error) == 1 and "corrupt" in at.error[0].value


def failing_page() -> None:
    """A page whose first part fails (AppTest runs this function's body as a script)."""
    import streamlit as st

    from cvae.app import widgets

    @widgets.guard
    def broken() -> None:
        raise KeyError("x")

    broken()
    st.markdown("after the error")


def test_first_start_writes_the_demo_cohort_with_a_progress_bar(env, tmp_path, monkeypatch):
    import cvae.paths

    monkeypatch.delenv("CVAE_DATA")
    monkeypatch.setattr(cvae.paths, "PROJECT_ROOT", tmp_path)
    monkeypatch.setitem(H.DEMO_COHORT, "n_test", 2)
    at = open_page()
    assert not at.exception and not at.error
    assert any("demo cohort" in s.value for s in at.success)
    root = tmp_path / "data" / "synthetic-acdc"
    assert sorted(p.name for p in (root / "testing").iterdir()) == ["patient001", "patient002"]
    assert [p.name for p in root.parent.iterdir()] == ["synthetic-acdc"]  # no temporary folder left
    assert int(at.dataframe[0].value.to_numpy().sum()) == 2


def test_guard_turns_exceptions_into_one_line_messages(caplog):
    assert W.friendly_message(ValueError("bad input: do this\nsecond line")) == "bad input: do this"
    message = W.friendly_message(RuntimeError("boom"))
    assert message.startswith("Unexpected error (RuntimeError: boom)") and "server log" in message

    at = AppTest.from_function(failing_page).run()
    assert not at.exception and len(at.error) == 1 and "KeyError" in at.error[0].value
    assert at.markdown[0].value == "after the error"
    assert any("Traceback" in r.exc_text for r in caplog.records if r.name == "cvae.app" and r.exc_text)


def test_selected_subject_reads_the_chart_selection():
    event = {"selection": {"points": [{"x": 1.0, "customdata": ["patient007", 55.0]}], "point_indices": [0]}}
    assert W.selected_subject(event) == "patient007"
    assert W.selected_subject({"selection": {"points": []}}) is None
    assert W.selected_subject(None) is None


# ---------------------------------------------------------------------------------------------------------------
# computations, called directly (tiny model: fast)


@pytest.fixture(scope="module")
def tiny_setup(tiny_cohort, tmp_path_factory):
    torch.manual_seed(0)
    model = CVAERegistration(**TINY_MODEL).eval()
    folder = save_checkpoint(tmp_path_factory.mktemp("tiny-ckpt") / "tiny", model, spacing=TINY_SPACING)
    pair = PairDataset(tiny_cohort, "testing", TINY_SIZE, TINY_SPACING,
                         cache_dir=tmp_path_factory.mktemp("tiny-app-cache")).pair(0)
    return model, folder, pair


def test_register_pair_measures_before_and_after(tiny_setup):
    model, _, pair = tiny_setup
    registration = compute.register_pair(model, pair)
    v = registration.volumes
    assert v.warped.shape == TINY_SIZE and v.displacement.shape == (3, *TINY_SIZE)
    before = structure_scores(pair.moving_label, pair.fixed_label, pair.spacing)
    after = structure_scores(v.warped_label, pair.fixed_label, pair.spacing)
    table = registration.metrics.set_index("structure")
    for name in STRUCTURES:
        assert table.loc[name, "Dice before (%)"] == pytest.approx(100 * before[name]["dice"])
        assert table.loc[name, "Dice after (%)"] == pytest.approx(100 * after[name]["dice"])
    assert table.loc["mean", "Dice after (%)"] == pytest.approx(table.loc[list(STRUCTURES), "Dice after (%)"].mean())
    assert 0 <= registration.summary["folding %"] <= 100 and registration.sigma.shape == (model.config.latent_dim,)


def test_register_pair_with_a_refined_code(tiny_setup):
    model, _, pair = tiny_setup
    plain = compute.register_pair(model, pair)
    refined = compute.register_pair(model, pair, refine_steps=3)
    summary = refined.summary
    assert summary["refine steps"] == 3 and "refine steps" not in plain.summary
    expected = refine_code(model, torch.from_numpy(pair.fixed)[None, None], torch.from_numpy(pair.moving)[None, None],
                           steps=3)
    np.testing.assert_allclose(refined.mu, expected.code[0].numpy(), rtol=1e-5, atol=1e-6)
    assert summary["LCC before"] == pytest.approx(float(expected.lcc_before[0]))
    assert summary["LCC after"] == pytest.approx(float(expected.lcc_after[0]))
    np.testing.assert_allclose(refined.sigma, plain.sigma)  # the posterior width of the pair, from the encoder
    decoded = compute.decode_pair(model, refined.mu, pair.moving, pair.moving_label, pair.spacing)
    np.testing.assert_allclose(decoded.displacement, refined.volumes.displacement, atol=1e-5)


def test_decode_pair_at_the_posterior_mean_reproduces_the_registration(tiny_setup):
    model, _, pair = tiny_setup
    registration = compute.register_pair(model, pair)
    decoded = compute.decode_pair(model, registration.mu, pair.moving, pair.moving_label, pair.spacing)
    np.testing.assert_allclose(decoded.displacement, registration.volumes.displacement, atol=1e-5)
    np.testing.assert_array_equal(decoded.warped_label, registration.volumes.warped_label)
    lv = decoded.measures
    assert lv["LVEF"] == pytest.approx(100 * (lv["LVEDV"] - lv["LVESV"]) / lv["LVEDV"])


def test_outputs_zip_holds_the_register_outputs_and_leaves_no_files(tiny_setup, tiny_cohort, monkeypatch, tmp_path):
    _, folder, _ = tiny_setup
    monkeypatch.setattr(__import__("tempfile"), "tempdir", str(tmp_path))
    subject = find_subjects(tiny_cohort, "testing")[0].subject
    archive = zipfile.ZipFile(io.BytesIO(export.subject_outputs_zip(str(folder), str(tiny_cohort), subject)))
    names = set(archive.namelist())
    assert {"warped.nii.gz", "warped_seg.nii.gz", "displacement.nii.gz", "jacobian.nii.gz", "metrics.json"} <= names
    metrics = json.loads(archive.read("metrics.json"))
    assert set(metrics["segmentation"]["structures"]) == set(STRUCTURES)
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_choices_put_the_default_first_and_skip_other_models(monkeypatch, tmp_path):
    extra = tmp_path / "extra"
    save_checkpoint(extra / "mine", CVAERegistration(**TINY_MODEL), spacing=TINY_SPACING)
    (extra / "other-model").mkdir()
    (extra / "other-model" / "config.json").write_text('{"format": "cvae-reg voxelmorph checkpoint", "model": {}}')
    monkeypatch.setenv("CVAE_CHECKPOINTS", str(extra))
    monkeypatch.setenv("CVAE_CHECKPOINT", "synthetic-acdc")
    choices = K.checkpoint_choices()
    assert choices[0] == "synthetic-acdc" and "mine" in choices and len(choices) == len(set(choices))
    assert "other-model" not in choices  # another model's checkpoint cannot drive this app
    monkeypatch.delenv("CVAE_CHECKPOINT")
    assert K.default_checkpoint() == "synthetic-acdc"
