"""Motion page: a whole cardiac cycle (a cohort subject's cine, the synthetic generator's rendering of it, or an
uploaded cine) tracked by the registration model: the cycle played with the carried labels and the warped ED frame,
the volume curves, the code trajectory, cycles simulated from the ED frame alone by the motion model, and the motion
carried onto another heart."""
from __future__ import annotations

import numpy as np
import streamlit as st

from cvae import figures as F
from cvae.app import cached as C
from cvae.app import cohort as H
from cvae.app import motion as M
from cvae.app import widgets as W
from cvae.app.cine import Cine, needs_rendering, subject_info
from cvae.io.uploads import MAX_UPLOAD_MB, Upload

#: Seconds the synthetic generator takes to render one subject's cycle on the 2-core CPU.
RENDER_SECONDS = 15
TRAIN_MOTION = "cvae train-motion --data data/synthetic-cine --out checkpoints/motion-synthetic-acdc"

W.ensure_app_entry()
st.title("Motion")
st.caption("The registration model registers the ED frame to every frame of a cine. The codes z_t of these "
           "registrations are the cycle's *motion matrix*, and the ED segmentation carried along gives the volume "
           "curves. A motion model learned over many such cycles simulates a whole cycle from the ED frame alone.")


def _pick_source(root: str) -> M.CineSource | None:
    left, right = st.columns([1, 2], vertical_alignment="bottom")
    choice = left.radio("Cine", ["cohort subject", "upload a cine"], horizontal=True, key="motion_source")
    if choice == "cohort subject":
        with right:
            subject = W.subject_select("Subject", key="motion_subject", prefer_group="DCM")
        return M.CineSource(root=root, subject=subject)
    with st.form("motion_uploads"):
        cols = st.columns([3, 3, 1])
        cine = cols[0].file_uploader("Cine (4-D NIfTI: X × Y × Z × T)", key="motion_upload_cine")
        seg = cols[1].file_uploader("Segmentation of the ED frame (optional)", key="motion_upload_seg")
        ed = cols[2].number_input("ED frame", min_value=1, value=1, step=1, key="motion_upload_ed")
        st.form_submit_button("Track the uploaded cine", type="primary", key="motion_upload_submit")
    st.caption(f"A cine as ACDC's `patientNNN_4d.nii.gz` (.nii or .nii.gz, at most {MAX_UPLOAD_MB} MB) and, for the "
               "volume curves, the ED frame's segmentation on its grid (ACDC labels: 1 RV, 2 LV myocardium, 3 LV "
               "cavity). The files are kept in a temporary folder only while they are read.")
    if cine is None:
        st.info("Upload a cine, then press **Track the uploaded cine**.")
        return None
    return M.CineSource(cine=Upload(cine.name, cine.getvalue()),
                        ed_seg=None if seg is None else Upload(seg.name, seg.getvalue()), ed_frame=int(ed))


def _load(source: M.CineSource) -> Cine:
    message = "Loading the cine…"
    if source.subject and needs_rendering(subject_info(source.root, source.subject)):
        message = (f"{source.subject} has no cine: rendering its cycle with the synthetic generator (about "
                   f"{RENDER_SECONDS} s on a 2-core CPU, once: then it is cached on disk)…")
    with st.spinner(message, show_time=True):
        return M.load_cine(source)


@st.fragment
@W.guard
def _raw_cine(cine: Cine) -> None:
    """The cine as acquired, playing; a fragment, so that its slider reruns only this part."""
    left, right = st.columns([2, 3], gap="large")
    with left:
        n = cine.images.shape[2]
        index = st.slider("Short-axis slice of the cine", 0, n - 1, n // 2, key=f"motion_cine_slice_{n}")
        slices = np.stack([F.extract_slice(cine.images[..., t], "axial", index) for t in range(cine.frames)])
        st.image(F.cine_gif(slices, cine.frame_ms, F.view_aspect("axial", cine.spacing)), width=340)
    with right:
        st.subheader("The cine")
        cols = st.columns(3)
        cols[0].metric("frames", cine.frames)
        cols[1].metric("frame interval", "n/a" if cine.frame_ms is None else f"{cine.frame_ms:.0f} ms")
        cols[2].metric("ED frame", cine.ed_frame)
        size = " × ".join(str(s) for s in cine.images.shape[:3])
        spacing = " × ".join(f"{s:.2f}" for s in cine.spacing)
        st.caption(f"{cine.origin}. Frames of {size} voxels of {spacing} mm"
                   + ("" if cine.es_frame is None else f"; ES frame {cine.es_frame} according to Info.cfg")
                   + ("." if cine.ed_label is not None else "; no ED segmentation: no volume curves."))


def _track(checkpoint: str, source: M.CineSource, frames: int) -> M.TrackedCycle:
    seconds = frames * M.TRACK_SECONDS_PER_FRAME
    with st.spinner(f"Tracking: the ED frame registered to each of the {frames} frames (about {seconds:.0f} s on a "
                    "2-core CPU)…", show_time=True):
        return M.tracked(checkpoint, source)


@st.fragment
@W.guard
def _viewer(cycle: M.TrackedCycle) -> None:
    """The tracked cycle, animated; a fragment, so that view and slice rerun only this part."""
    st.subheader("The tracked cycle")
    cols = st.columns([2, 3])
    view = cols[0].segmented_control("View", F.VIEWS, format_func=F.VIEW_TITLES.get, default="axial",
                                     key="motion_view") or "axial"
    n = F.n_slices(cycle.frames.shape, view)
    index = cols[1].slider("Slice", 0, n - 1, n // 2, key=f"motion_slice_{view}")

    def cut(volumes: np.ndarray) -> np.ndarray:
        return np.stack([F.extract_slice(v, view, index) for v in volumes])

    names = [f"{t}" + {cycle.ed_frame: " ED", cycle.es_frame: " ES"}.get(t, "") for t in range(1, cycle.count + 1)]
    st.plotly_chart(F.cycle_animation(cut(cycle.frames), cut(cycle.warped),
                                      None if cycle.labels is None else cut(cycle.labels),
                                      F.view_aspect(view, cycle.spacing), names, cycle.frame_ms),
                    key="motion_animation")
    st.caption("Press ▶ play, or drag the frame slider. Left: the frame on the model's grid around the heart. "
               "Middle: the ED segmentation (:blue[RV cavity], :orange[LV myocardium], :red[LV cavity]) carried to "
               "the frame by the registration ED → frame. Right: the ED frame warped by the same transform; it "
               f"should look like the frame. Tracked in {cycle.seconds:.1f} s; folding (det J ≤ 0) in at most "
               f"{100 * cycle.folding.max():.3f} % of a frame's voxels.")


@W.guard
def _simulation_controls(checkpoint: str, source: M.CineSource, cycle: M.TrackedCycle) -> M.SimulatedCycles | None:
    """The motion model's status in one line, a toggle and the simulated cycles when it is on."""
    name = M.motion_checkpoint()
    if M.motion_model_missing(name):
        st.info(f"The motion model `{name}` is missing, so no cycle is simulated: make it with `{TRAIN_MOTION}` "
                "(on a cohort with cines, `cvae synth --cine --out data/synthetic-cine`).", icon=":material/info:")
        return None
    _, config = M.get_motion_model(checkpoint, name)
    other = M.trained_for(checkpoint, config)
    if other is not None:
        st.warning(f"The motion model `{name}` learned the codes of `{other}`, not of this checkpoint: its cycles "
                   "are not meaningful here (pick that checkpoint in the sidebar).", icon=":material/warning:")
    cols = st.columns([2, 2, 3], vertical_alignment="center")
    on = cols[0].toggle("Simulate from the ED frame", key="motion_simulate")
    n = cols[1].select_slider("Simulated cycles", [1, 3, 5], value=3, key="motion_samples")
    cols[2].caption(f"Motion model `{name}`: one style per cycle drawn from its prior, each cycle decoded on this "
                    "ED frame.")
    if not on:
        return None
    seconds = n * cycle.count * M.DECODE_SECONDS_PER_FRAME
    with st.spinner(f"Simulating {n} cycles and decoding them (about {seconds:.0f} s on a 2-core CPU)…",
                    show_time=True):
        return M.simulated(checkpoint, name, source, int(n))


@W.guard
def _curves(cycle: M.TrackedCycle, cine: Cine, simulated: M.SimulatedCycles | None) -> None:
    st.markdown("**Volumes over the cycle**")
    if cycle.volumes is None:
        st.plotly_chart(F.volume_curves_figure({"mean displacement": cycle.motion_mm}, cycle.ed_frame,
                                               cycle.es_frame, marked="mean displacement",
                                               frame_ms=cycle.frame_ms, y_title="mean displacement (mm)"),
                        key="motion_curves")
        st.caption("No ED segmentation, so no volumes: the mean displacement over the grid, and ES at its largest.")
        return
    others = {} if simulated is None else {f"simulated LV cavity {k + 1}": v for k, v in enumerate(simulated.lv)}
    st.plotly_chart(F.volume_curves_figure(cycle.volumes, cycle.ed_frame, cycle.es_frame, others=others,
                                           reference_es=cine.es_frame, frame_ms=cycle.frame_ms),
                    key="motion_curves")
    st.caption("The ED segmentation carried to every frame by the registration, measured on the model's grid (at "
               "the ED frame, the segmentation itself, as in `cvae track`). ES (detected) is the frame of the "
               "smallest LV cavity" + ("." if simulated is None else "; dashed: the LV cavity of the cycles "
                                       "simulated from the ED frame alone."))


def _percent(value: float) -> str:
    """A percentage for a metric; ``n/a`` for NaN (an ejection fraction without an ED volume)."""
    return f"{value:.0f} %" if np.isfinite(value) else "n/a"


@W.guard
def _measures(cycle: M.TrackedCycle, simulated: M.SimulatedCycles | None) -> None:
    if cycle.volumes is None:
        return
    lv = cycle.volumes["LV cavity"]
    cols = st.columns(5)
    cols[0].metric("LVEDV", f"{lv[cycle.ed_frame - 1]:.0f} mL")
    cols[1].metric(f"LVESV (frame {cycle.es_frame})", f"{lv[cycle.es_frame - 1]:.0f} mL")
    cols[2].metric("LVEF", _percent(cycle.ejection_fraction()))
    cols[3].metric("RVEF", _percent(cycle.ejection_fraction("RV cavity")))
    if simulated is not None:
        cols[4].metric("LVEF, simulated from ED", _percent(simulated.lvef.mean()),
                       help=f"mean of {len(simulated.lvef)} cycles (from {simulated.lvef.min():.0f} to "
                            f"{simulated.lvef.max():.0f} %), simulated and decoded in {simulated.seconds:.1f} s")


@W.guard
def _trajectory(checkpoint: str, root: str, cycle: M.TrackedCycle, simulated: M.SimulatedCycles | None) -> None:
    st.markdown("**Code trajectory z_t**")
    cohort = M.cohort_codes(checkpoint, root)
    trajectory, paths = M.code_trajectory(cycle.codes, cohort, None if simulated is None else simulated.codes)
    ratio = trajectory.explained
    st.plotly_chart(F.trajectory_figure(trajectory.points, cycle.ed_frame, cycle.es_frame, trajectory.background,
                                        paths, (f"PC 1 ({100 * ratio[0]:.0f} %)", f"PC 2 ({100 * ratio[1]:.0f} %)")),
                    key="motion_trajectory")
    if cohort is None:
        st.caption("PCA of this cycle's codes. Open the Embedding page once (it encodes the cohort) to see the "
                   "cycle among the cohort's codes.")
    else:
        st.caption(f"PCA fitted on the codes of the cohort's {len(cohort)} subjects (faint, by group: each one's "
                   "ED → ES code, as on the Embedding page). The cycle leaves ED, reaches its ES code and comes "
                   "back.")


@W.guard
def _transport(checkpoint: str, root: str, source: M.CineSource, cycle: M.TrackedCycle) -> None:
    st.subheader("The cycle on another heart")
    st.caption("The tracked codes decoded on another subject's ED frame (no registration between the two hearts: the "
               "decoder is conditioned on the ED image): e.g. a dilated heart's (DCM) weak motion on a normal "
               "heart (NOR).")
    cols = st.columns([3, 2], vertical_alignment="bottom")
    with cols[0]:
        target = W.subject_select("Target heart (its ED frame)", key="motion_target", prefer_group="NOR")
    if not cols[1].toggle("Transport the cycle", key="motion_transport"):
        return
    seconds = cycle.count * M.DECODE_SECONDS_PER_FRAME
    with st.spinner(f"Decoding the cycle on the target's ED frame (about {seconds:.0f} s on a 2-core CPU)…",
                    show_time=True):
        result = M.transported(checkpoint, source, root, target)
    lv = result.volumes["LV cavity"]
    curves = {"LV cavity (transported)": lv, "RV cavity (transported)": result.volumes["RV cavity"]}
    others = {} if cycle.volumes is None else {f"LV cavity of {source.name} (tracked)": cycle.volumes["LV cavity"]}
    left, right = st.columns([3, 1])
    left.plotly_chart(F.volume_curves_figure(curves, cycle.ed_frame, int(np.argmin(lv)) + 1,
                                             marked="LV cavity (transported)", others=others,
                                             frame_ms=cycle.frame_ms), key="motion_transport_curves")
    right.metric("LVEF, transported", _percent(result.lvef))
    right.metric(f"LVEF of {source.name}", "n/a" if cycle.volumes is None else _percent(cycle.ejection_fraction()))
    right.metric(f"LVEF of {target} (own ED, ES)", _percent(result.target_lvef))
    right.caption(f"Decoded in {result.seconds:.1f} s.")


@W.guard
def main() -> None:
    checkpoint, root = C.active_checkpoint(), str(H.cohort_root())
    source = _pick_source(root)
    if source is None:
        return
    cine = _load(source)
    _raw_cine(cine)
    cycle = _track(checkpoint, source, cine.frames)
    _viewer(cycle)
    st.subheader("Volumes and codes over the cycle")
    simulated = _simulation_controls(checkpoint, source, cycle)
    _measures(cycle, simulated)
    left, right = st.columns(2, gap="large")
    with left:
        _curves(cycle, cine, simulated)
    with right:
        _trajectory(checkpoint, root, cycle, simulated)
    _transport(checkpoint, root, source, cycle)


main()
