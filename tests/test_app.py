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
from cvae.checkpoint import load_model, save_checkpoint
from cvae.data.acdc import find_subjects
from cvae.data.dataset import PairDataset
from cvae.data.grid import DEFAULT_SIZE, DEFAULT_SPACING
from cvae.data.labels import STRUCTURES
from cvae.evaluation.evaluate import write_results
from cvae.fields import image_tensor
from cvae.latent.refine import refine_code
from cvae.optimize import OptimizeSettings, register_optimized
from cvae.model import CVAERegistration

from conftest import (
    TINY_MODEL,
    TINY_SIZE,
    TINY_SPACING,
    app_environment,
    dice_by_hand,
    folding_by_hand,
    nearest_warp,
    write_patient,
)

APP = str(Path(__file__).resolve().parent.parent / "app.py")
TIMEOUT = 180


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
    assert len(at.get("page_link")) == 6
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


#: Voxels along X of the transform of ``translation_checkpoint``.
TRANSLATION = 4.0


@pytest.fixture(scope="module")
def translation_checkpoint(tmp_path_factory) -> Path:
    """A random paper-sized model whose decoder's velocity is the constant (4, 0, 0) voxels whatever the pair: after
    the Gaussian smoothing (zero padding: it fades within 7 voxels of the borders) and exp, the translation by 4
    voxels along X away from the borders."""
    torch.manual_seed(0)
    model = CVAERegistration()
    with torch.no_grad():
        model.decoder.velocity.weight.zero_()
        model.decoder.velocity.bias.copy_(torch.tensor([TRANSLATION, 0.0, 0.0]))
    return save_checkpoint(tmp_path_factory.mktemp("translation") / "translation", model,
                           training={"note": "a constant velocity, for the app tests"})


def test_register_page_registers_shows_metrics_and_follows_the_slice_slider(env, translation_checkpoint,
                                                                            monkeypatch):
    monkeypatch.setenv("CVAE_CHECKPOINT", str(translation_checkpoint))
    at = open_page("register")
    assert_clean(at)
    subject = at.selectbox(key="register_subject").value
    # The same pair and transform, computed here: the preprocessed pair (on the checkpoint's grid) and the model's
    # displacement, then the ED labels moved by it with numpy and Dice counted by hand.
    model = load_model(translation_checkpoint, "cpu")
    pair = PairDataset(env["CVAE_DATA"], None, DEFAULT_SIZE, DEFAULT_SPACING, subjects=[subject]).pair(0)
    with torch.no_grad():
        u = model.register(image_tensor(pair.fixed), image_tensor(pair.moving), inverse=False).displacement
    u = u[0].numpy()
    inner = np.zeros(DEFAULT_SIZE, bool)
    inner[7:-7, 7:-7, 7:-7] = True
    heart = ((pair.moving_label > 0) | (pair.fixed_label > 0)) & inner
    assert heart.sum() > 1000
    np.testing.assert_allclose(u[:, heart], np.array([[TRANSLATION], [0.0], [0.0]]).repeat(heart.sum(), 1),
                               atol=1e-4)  # the heart away from the borders moves by exactly the translation
    warped = nearest_warp(pair.moving_label, u)
    before, after = {}, {}
    for structure, values in STRUCTURES.items():
        fixed = np.isin(pair.fixed_label, values)
        before[structure] = 100 * dice_by_hand(np.isin(pair.moving_label, values), fixed)
        after[structure] = 100 * dice_by_hand(np.isin(warped, values), fixed)
    table = at.dataframe[0].value.set_index("structure")
    assert list(table.index) == [*STRUCTURES, "mean"]
    for structure in STRUCTURES:
        assert table.loc[structure, "Dice before (%)"] == pytest.approx(before[structure], abs=1e-6), structure
        assert table.loc[structure, "Dice after (%)"] == pytest.approx(after[structure], abs=1e-6), structure
    mean_before, mean_after = np.mean(list(before.values())), np.mean(list(after.values()))
    assert table.loc["mean", "Dice after (%)"] == pytest.approx(mean_after, abs=1e-6)
    assert abs(mean_after - mean_before) > 1.0  # the labels were moved: not the unregistered scores
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["mean Dice"] == f"{mean_after:.1f} %"
    assert metrics["folding (det J ≤ 0)"] == f"{100 * folding_by_hand(u):.3f} %"
    (figure,) = charts(at)
    assert {t["name"] for t in figure["data"] if t["type"] == "heatmap"} >= {"fixed", "det J", "|u|"}
    slider = at.slider(key="register_slice_axial")
    assert slider.value == 16 and slider.max == 31
    slider.set_value(5).run()
    assert_clean(at)
    (moved,) = charts(at)
    assert not np.array_equal(trace_z(moved, "fixed"), trace_z(figure, "fixed"))
    np.testing.assert_allclose(trace_z(moved, "fixed"), pair.fixed[:, :, 5].T, atol=1e-6)  # rows Y, columns X
    assert at.selectbox(key="register_subject").value == subject
    assert len(at.get("download_button")) == 1
    at.select_slider(key="register_refine").set_value(10).run()
    assert_clean(at)
    assert any("Code refined by 10 gradient steps" in c.value for c in at.caption)
    assert at.select_slider(key="register_optimize").disabled
    at.select_slider(key="register_refine").set_value(0).run()
    at.select_slider(key="register_optimize").set_value(10).run()
    assert_clean(at)
    assert any(c.value.startswith("Velocity optimised by") for c in at.caption)
    assert not any("Code refined" in c.value for c in at.caption)


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
        at.form_submit_button(key="upload_submit").click().run()
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
    at.form_submit_button(key="upload_submit").click().run()
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
    at.button(key="walk_prior").click().run()
    prior = np.array([at.slider(key=f"walk_z_{i}").value for i in range(16)])
    assert not np.allclose(prior, mu)
    at.button(key="walk_cohort").click().run()  # a code drawn from the fit of the cohort's codes
    assert_clean(at)
    like_cohort = np.array([at.slider(key=f"walk_z_{i}").value for i in range(16)])
    assert not np.allclose(like_cohort, prior) and not np.allclose(like_cohort, mu)
    at.button(key="walk_reset").click().run()
    np.testing.assert_allclose([at.slider(key=f"walk_z_{i}").value for i in range(16)], mu)
    at.button(key="walk_posterior").click().run()  # a draw of q(z | ES, ED): sigma = 0.05 for this random encoder
    posterior = np.array([at.slider(key=f"walk_z_{i}").value for i in range(16)])
    assert not np.allclose(posterior, mu) and np.abs(posterior - mu).max() < 0.5
    metric_labels = [m.label for m in at.metric]
    assert "LV ejection fraction" in metric_labels


@pytest.fixture(scope="module")
def wide_posterior_checkpoint(tmp_path_factory) -> Path:
    """A random model on the tiny grid whose code changes the deformation clearly and whose posterior is N(mu, I)."""
    torch.manual_seed(0)
    model = CVAERegistration(**TINY_MODEL)
    with torch.no_grad():
        model.decoder.fc.weight.normal_(std=30.0)
        model.decoder.velocity.weight.normal_(std=1.0)
        model.encoder.logvar.bias.zero_()
    return save_checkpoint(tmp_path_factory.mktemp("wide") / "wide-posterior", model, spacing=TINY_SPACING)


def test_latent_walk_animation_and_uncertainty(env, wide_posterior_checkpoint, monkeypatch):
    monkeypatch.setenv("CVAE_CHECKPOINT", str(wide_posterior_checkpoint))
    at = open_page("latent_walk")
    at.select_slider(key="walk_anim_frames").set_value(5)
    at.toggle(key="walk_anim_on").set_value(True)
    at.select_slider(key="walk_k").set_value(4)
    at.toggle(key="walk_unc_on").set_value(True).run()
    assert_clean(at)
    animation = next(c for c in charts(at) if c.get("frames"))
    assert len(animation["frames"]) == 5 and len(animation["layout"]["sliders"][0]["steps"]) == 5
    uncertainty = next(c for c in charts(at) if any(t.get("name") == "std" for t in c["data"]))
    shown = trace_z(uncertainty, "std")
    # The std (mm) over k = 4 codes mu + sigma * eps (eps of seed 0) decoded here, numpy's unbiased std per axis.
    subject, index = at.selectbox(key="walk_subject").value, at.slider(key="walk_unc_slice").value
    model = load_model(wide_posterior_checkpoint, "cpu")
    pair = PairDataset(env["CVAE_DATA"], None, TINY_SIZE, TINY_SPACING, subjects=[subject]).pair(0)
    fixed, moving = image_tensor(pair.fixed), image_tensor(pair.moving)
    with torch.no_grad():
        mu, logvar = model.encode(fixed, moving)
        z = mu + torch.randn(4, mu.shape[1], generator=torch.Generator().manual_seed(0)) * torch.exp(0.5 * logvar)
        u = model.decode(z, moving).displacement.double().numpy()
    u_mm = u * np.asarray(TINY_SPACING).reshape(1, 3, 1, 1, 1)
    std = np.sqrt(u_mm.var(axis=0, ddof=1).sum(axis=0))
    expected = std[:, :, index].T  # the axial slice: rows along Y, columns along X
    assert index == TINY_SIZE[2] // 2 and shown.shape == expected.shape
    assert expected.max() > 1.0  # mm: a real spread, not float rounding
    np.testing.assert_allclose(shown, expected, rtol=1e-4, atol=1e-4)
    assert any(f"Mean std over the volume: {std.mean():.3f} mm" in c.value for c in at.caption)


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


def test_transport_group_table_is_computed_on_request_then_cached(env, monkeypatch):
    # one source and one target per group (the page's 4 x 2 decode 200 pairs: the same code path, 8 times longer)
    monkeypatch.setattr(C, "TRANSPORT_SOURCES", 1)
    monkeypatch.setattr(C, "TRANSPORT_TARGETS", 1)
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
    at.button_group(key="embedding_method").set_value("pca").run()
    assert_clean(at)
    assert charts(at)[0]["layout"]["xaxis"]["title"]["text"] == "PC 1"
    subject = at.selectbox(key="embedding_pick").options[3]
    at.selectbox(key="embedding_pick").set_value(subject)
    at.button(key="embedding_open").click().run()
    assert_clean(at)
    assert at.title[0].value == "Register"
    assert at.selectbox(key="register_subject").value == subject


def test_benchmark_reads_results_and_runs_a_small_evaluation(env):
    at = open_page("benchmark")
    assert_clean(at)
    assert any("No evaluation results" in i.value for i in at.info)
    # the shipped reference: every method on both cohorts, side by side, before any evaluation was run
    reference = at.dataframe[0].value
    assert {"cvae", "cvae-opt", "demons"} <= set(reference.index)
    assert list(reference.columns[:2]) == ["Dice (%) · own", "Dice (%) · foreign"]
    assert all(float(v) > 50 for v in reference.loc["cvae", ["Dice (%) · own", "Dice (%) · foreign"]])
    own = charts(at)
    assert len(own) == 1  # the reference box plot, with no results folder at all
    at.button_group(key="benchmark_reference_cohort").set_value("foreign").run()
    assert_clean(at)
    assert charts(at)[0] != own[0]
    rng = np.random.default_rng(0)
    rows = [{"subject": f"patient{s:03d}", "group": "NOR", "method": method, "structure": structure,
             "dice": rng.uniform(0.5, 0.9), "hd95": rng.uniform(3, 12), "rmse": 0.1,
             "negative_jacobian_fraction": 0.0, "mean_displacement_mm": 1.0, "mean_gradient_norm": 0.1,
             "seconds": {"cvae": 0.3, "demons": 40.0}[method]}
            for s in range(1, 4) for method in ("cvae", "demons") for structure in STRUCTURES]
    write_results(pd.DataFrame(rows), Path(env["CVAE_RESULTS"]), "test results")
    at.run()
    assert_clean(at)
    summary = at.dataframe[1].value
    assert list(summary.index) == ["cvae", "demons"] and list(summary["cases"]) == [3, 3]
    dice = charts(at)[1]  # after the reference's
    at.button_group(key="benchmark_metric").set_value("hd95").run()
    assert charts(at)[1] != dice
    at.multiselect(key="benchmark_methods").set_value(["identity"])
    at.button(key="benchmark_run").click().run()
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


def test_demo_cohort_is_not_written_over_a_folder_with_other_files(tmp_path):
    root = tmp_path / "cohort"
    (root / "training").mkdir(parents=True)  # an ACDC-like split folder, but no patient in it
    (root / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds files but no patient folder") as info:
        H.create_demo_cohort(root)
    assert str(info.value).startswith(str(root)) and "\n" not in str(info.value)
    assert sorted(p.name for p in root.iterdir()) == ["notes.txt", "training"]
    assert (root / "notes.txt").read_text() == "mine" and list((root / "training").iterdir()) == []
    assert [p.name for p in tmp_path.iterdir()] == ["cohort"]  # no temporary folder left beside it
    # a folder that holds a cohort already is left as it is
    write_patient(tmp_path / "acdc" / "testing", 7)
    files = sorted(p.relative_to(tmp_path) for p in (tmp_path / "acdc").rglob("*"))
    assert H.create_demo_cohort(tmp_path / "acdc") == tmp_path / "acdc"
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "acdc").rglob("*")) == files


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
    """Dice before and after against hand counts, on a model whose deformation is large and folds in places."""
    _, _, pair = tiny_setup
    torch.manual_seed(0)
    model = CVAERegistration(**{**TINY_MODEL, "n_steps": 1}).eval()  # one squaring: a crude exp that can fold
    with torch.no_grad():
        model.decoder.velocity.weight.normal_(std=6.0)
        expected = model.register(image_tensor(pair.fixed), image_tensor(pair.moving), inverse=False)
    registration = compute.register_pair(model, pair)
    v = registration.volumes
    assert v.warped.shape == TINY_SIZE and v.displacement.shape == (3, *TINY_SIZE)
    u = expected.displacement[0].numpy()
    np.testing.assert_allclose(v.displacement, u, atol=1e-6)
    assert np.abs(u).max() > 3.0  # voxels: a large deformation
    warped = nearest_warp(pair.moving_label, u)
    np.testing.assert_array_equal(v.warped_label, warped)
    assert v.warped_label.dtype == np.uint8
    table = registration.metrics.set_index("structure")
    for name, values in STRUCTURES.items():
        fixed = np.isin(pair.fixed_label, values)
        before = dice_by_hand(np.isin(pair.moving_label, values), fixed)
        after = dice_by_hand(np.isin(warped, values), fixed)
        assert table.loc[name, "Dice before (%)"] == pytest.approx(100 * before, abs=1e-9)
        assert table.loc[name, "Dice after (%)"] == pytest.approx(100 * after, abs=1e-9)
    assert not np.allclose(table["Dice after (%)"], table["Dice before (%)"], atol=1.0)
    assert table.loc["mean", "Dice after (%)"] == pytest.approx(table.loc[list(STRUCTURES), "Dice after (%)"].mean())
    folding = 100 * folding_by_hand(u)
    assert folding > 0.1  # percent: this transform folds
    assert registration.summary["folding %"] == pytest.approx(folding, abs=1e-9)
    with torch.no_grad():
        _, logvar = model.encode(image_tensor(pair.fixed), image_tensor(pair.moving))
    np.testing.assert_allclose(registration.sigma, torch.exp(0.5 * logvar[0]).numpy(), rtol=1e-6)
    np.testing.assert_allclose(registration.mu, expected.mu[0].numpy(), rtol=1e-6)


def test_structure_table_mean_row_is_the_mean_of_the_structure_rows(tiny_setup):
    _, _, pair = tiny_setup
    no_rv = [np.where(label == 1, 0, label) for label in (pair.moving_label, pair.fixed_label)]
    warped = np.roll(no_rv[0], 1, axis=0)
    with pytest.warns(UserWarning, match="RV"):  # RV is empty in every map: nan, left out of the means
        table = compute.structure_table(no_rv[0], warped, no_rv[1], pair.spacing).set_index("structure")
    assert list(table.index) == [*STRUCTURES, "mean"]
    assert table.loc["RV"].isna().all()
    for column in ("Dice before (%)", "Dice after (%)", "HD95 before (mm)", "HD95 after (mm)"):
        rows = table.loc[list(STRUCTURES), column].to_numpy(float)
        assert table.loc["mean", column] == pytest.approx(np.nanmean(rows), abs=1e-12)
    hand = 100 * dice_by_hand(np.isin(warped, (2, 3)), np.isin(no_rv[1], (2, 3)))
    assert table.loc["LV epicardium", "Dice after (%)"] == pytest.approx(hand, abs=1e-9)
    assert table.loc["LV epicardium", "Dice after (%)"] != table.loc["LV epicardium", "Dice before (%)"]


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


def test_register_pair_with_an_optimised_velocity(tiny_setup):
    model, _, pair = tiny_setup
    plain = compute.register_pair(model, pair)
    optimised = compute.register_pair(model, pair, optimize_steps=3)
    fixed, moving = torch.from_numpy(pair.fixed)[None, None], torch.from_numpy(pair.moving)[None, None]
    expected, report = register_optimized(model, fixed, moving, OptimizeSettings(coarse_steps=3), inverse=False)
    summary = optimised.summary
    assert summary["optimize steps"] == sum(report.steps) and "optimize steps" not in plain.summary
    assert summary["LCC before"] == pytest.approx(float(report.lcc_before[0]))
    assert summary["LCC after"] == pytest.approx(float(report.lcc_after[0])) and summary["LCC after"] > summary[
        "LCC before"]
    np.testing.assert_allclose(optimised.volumes.displacement, expected.displacement[0].numpy(), rtol=1e-5, atol=1e-5)
    assert not np.allclose(optimised.volumes.displacement, plain.volumes.displacement, atol=1e-3)
    np.testing.assert_allclose(optimised.mu, plain.mu)  # the encoder's code: what the latent pages work on
    with pytest.raises(ValueError, match="not both"):
        compute.register_pair(model, pair, refine_steps=2, optimize_steps=2)


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
