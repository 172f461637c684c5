"""Register page: one pair (a cohort subject's ED -> ES, or two uploaded NIfTI files), a 3-D slice viewer, metrics
and the NIfTI outputs of ``cvae register`` as a download."""
from __future__ import annotations

import io
import zipfile
from collections.abc import Callable

import streamlit as st

from cvae import figures as F
from cvae.app import cached as C
from cvae.app import cohort as H
from cvae.app import export
from cvae.app import widgets as W
from cvae.app.compute import Registration
from cvae.io.uploads import MAX_UPLOAD_MB, ROLES, Upload

UPLOAD_LABELS = {"fixed": "Fixed image (e.g. ES frame)", "moving": "Moving image (e.g. ED frame)",
                 "fixed_seg": "Fixed segmentation (optional)", "moving_seg": "Moving segmentation (optional)"}

W.ensure_app_entry()
st.title("Register")
st.caption("The network sees the pair (fixed F, moving M) once and returns the transform φ with M ∘ φ ≈ F. "
           "For a cohort subject, M is the end-diastolic (ED) frame and F the end-systolic (ES) frame: φ is the "
           "contraction of the heart.")


#: Seconds per velocity-optimisation step on the 2-core CPU the project is developed on: 20 steps took 2.3 s per
#: case on one thread, the forward pass included (benchmarks/RESULTS.md, section 8, same run as demons).
OPTIMIZE_SECONDS_PER_STEP = 0.12


def _cohort_pair(checkpoint: str, steps: tuple[int, int]) -> tuple[Registration, Callable[[], bytes], str]:
    root = str(H.cohort_root())
    subject = W.subject_select("Subject", key="register_subject")
    registration = C.register_subject(checkpoint, root, subject, *steps)
    return registration, lambda: export.subject_outputs_zip(checkpoint, root, subject, *steps), subject


def _uploaded_pair(checkpoint: str, steps: tuple[int, int]) -> tuple[Registration, Callable[[], bytes], str] | None:
    with st.form("uploads"):
        cols = st.columns(4)
        files = [col.file_uploader(UPLOAD_LABELS[role], key=f"upload_{role}") for col, role in zip(cols, ROLES)]
        st.form_submit_button("Register the uploaded pair", type="primary", key="upload_submit")
    st.caption(f"3-D NIfTI volumes (.nii or .nii.gz, at most {MAX_UPLOAD_MB} MB each) of one acquisition: both "
               "images on the same grid; segmentations with ACDC labels (1 RV, 2 LV myocardium, 3 LV cavity). The "
               "files are kept in a temporary folder only while they are read.")
    if files[0] is None and files[1] is None:
        st.info("Upload a fixed and a moving image, then press **Register the uploaded pair**.")
        return None
    uploads = tuple(None if f is None else Upload(f.name, f.getvalue()) for f in files)
    registration = C.register_uploads(checkpoint, uploads, *steps)
    return registration, lambda: export.uploads_zip(checkpoint, uploads, *steps), "upload"


def _summary(registration: Registration) -> None:
    cols = st.columns(5)
    metrics, summary = registration.metrics, registration.summary
    if len(metrics):
        mean = metrics.set_index("structure").loc["mean"]
        cols[0].metric("mean Dice", f"{mean['Dice after (%)']:.1f} %",
                       f"{mean['Dice after (%)'] - mean['Dice before (%)']:+.1f} vs. unregistered")
        cols[1].metric("mean HD95", f"{mean['HD95 after (mm)']:.1f} mm",
                       f"{mean['HD95 after (mm)'] - mean['HD95 before (mm)']:+.1f} mm", delta_color="inverse")
    else:
        cols[0].metric("mean Dice", "n/a", help="needs both segmentations")
    cols[2].metric("folding (det J ≤ 0)", f"{summary['folding %']:.3f} %")
    cols[3].metric("mean displacement", f"{summary['mean |u| mm']:.1f} mm")
    cols[4].metric("network time", f"{summary['seconds']:.2f} s")
    if "optimize steps" in summary:
        st.caption(f"Velocity optimised by {summary['optimize steps']:.0f} steps in {summary['seconds']:.1f} s: local "
                   f"cross-correlation of the pair {summary['LCC before']:.4f} → {summary['LCC after']:.4f}. The "
                   "field is no longer a decoded code: the latent pages show the network's code of this pair.")
    if "refine steps" in summary:
        st.caption(f"Code refined by {summary['refine steps']:.0f} gradient steps: local cross-correlation of the "
                   f"pair {summary['LCC before']:.4f} → {summary['LCC after']:.4f}.")


@st.fragment
@W.guard
def _viewer(volumes: F.RegistrationVolumes) -> None:
    """Slice viewer; a fragment, so that moving a slider reruns only this part of the page."""
    grid_step = st.select_slider("Grid spacing of the deformed grid (voxels)", [4, 8, 16], value=8,
                                 key="register_grid")
    tabs = st.tabs([F.VIEW_TITLES[v].capitalize() for v in F.VIEWS], key="register_view", on_change="rerun")
    for tab, view in zip(tabs, F.VIEWS):
        if not tab.open:
            continue
        with tab:
            n = F.n_slices(volumes.fixed.shape, view)
            index = st.slider(f"{F.VIEW_TITLES[view].capitalize()} slice", 0, n - 1, n // 2,
                              key=f"register_slice_{view}")
            st.plotly_chart(F.registration_figure(volumes, view, index, grid_step), key=f"register_figure_{view}")
    with st.expander("What do the panels show?"):
        st.markdown(
            "* **fixed** (ES) and **moving** (ED): the two input frames after preprocessing (1.5 × 1.5 × 3.15 mm "
            "grid around the heart, intensities in [0, 1]).\n"
            "* **deformed grid** (yellow, on the moving image): the straight lines of the fixed image's grid, drawn "
            "where φ takes them in the moving image (in-plane components only).\n"
            "* **warped**: the moving image resampled by φ; it should look like the fixed image. Solid contours: "
            "the moving segmentation carried along; dotted: the fixed segmentation.\n"
            "* **difference** F − M∘φ: what is left after registration (0 = white, perfect).\n"
            "* **|u|**: length of the displacement in mm.\n"
            "* **det J**: local volume change of φ — 1 (white) none, > 1 (red) expansion, < 1 (blue) "
            "compression, ≤ 0 folding (marked ✕; a diffeomorphism has none).")


def _download(make_zip: Callable[[], bytes], name: str) -> None:
    def safe_zip() -> bytes:
        try:
            return make_zip()
        except Exception as exc:  # noqa: BLE001 - a download cannot show st.error: the archive says what failed
            W.LOG.error("download failed", exc_info=exc)
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w") as archive:
                archive.writestr("error.txt", f"cvae register failed: {W.friendly_message(exc)}\n")
            return buffer.getvalue()

    st.download_button("Download the NIfTI outputs (.zip)", data=safe_zip, file_name=f"cvae-register-{name}.zip",
                       mime="application/zip", on_click="ignore", icon=":material/download:")
    st.caption("The outputs of `cvae register` on the fixed image's original grid: warped image (and segmentation), "
               "displacement, inverse displacement and velocity fields (ITK convention), Jacobian, metrics.json.")


@W.guard
def main() -> None:
    checkpoint = C.active_checkpoint()
    cols = st.columns([3, 2, 2])
    source = cols[0].radio("Pair", ["cohort subject (ED → ES)", "upload NIfTI files"], horizontal=True,
                           key="register_source", label_visibility="collapsed")
    refine = cols[1].select_slider("Refine the code (gradient steps)", [0, 10, 20, 40], value=0, key="register_refine",
                                   help="0: one forward pass (the method). With N > 0 the code is refined by N "
                                        "gradient steps on this pair's objective before decoding (cvae.latent.refine): "
                                        "closer images, about 0.5 s per step on a CPU.")
    optimize = cols[2].select_slider("Optimise the velocity (steps)", [0, 10, 20, 40], value=0,
                                     key="register_optimize", disabled=bool(refine),
                                     help="0: one forward pass. With N > 0 the velocity itself is optimised on this "
                                          "pair after the forward pass (cvae.optimize, at most N steps): still a "
                                          "diffeomorphism, no longer a decoded code. Off while the code is refined.")
    optimize = 0 if refine else optimize
    if optimize:
        cols[2].caption(f"about {optimize * OPTIMIZE_SECONDS_PER_STEP:.0f} s on a 2-core CPU")
    steps = (refine, optimize)
    picked = _cohort_pair(checkpoint, steps) if source.startswith("cohort") else _uploaded_pair(checkpoint, steps)
    if picked is None:
        return
    registration, make_zip, name = picked
    _summary(registration)
    _viewer(registration.volumes)
    if len(registration.metrics):
        st.subheader("Overlap of the segmentations")
        st.dataframe(registration.metrics.style.format(precision=1, na_rep="–"), hide_index=True)
        st.caption("Dice: overlap of the warped moving segmentation with the fixed one (100 % = identical). HD95: "
                   "95th percentile of the distance between their surfaces (mm). *before* = no registration.")
    _download(make_zip, name)


main()
