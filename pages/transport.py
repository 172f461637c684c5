"""Transport page: the motion (latent code) of a source subject applied to a target subject's ED image."""
from __future__ import annotations

import streamlit as st

from cvae import figures as F
from cvae.app import cached as C
from cvae.app import cohort as H
from cvae.app import widgets as W
from cvae.app.compute import Transported
from cvae.latent.transport_study import group_matrix, target_lvef

W.ensure_app_entry()
st.title("Transport")
st.caption("The code z of a pair describes the motion, while the anatomy comes in through the moving image the "
           "decoder is conditioned on. Decoding the **source**'s code for the **target**'s ED image therefore moves "
           "the target's heart the way the source's heart moves: a *simulated* ES frame. A dilated heart's weak "
           "contraction, transported to a normal heart, should give a low ejection fraction.")


@st.fragment
@W.guard
def _images(transported: Transported, source: str, target: str) -> None:
    src, tgt, sim = transported.source, transported.target, transported.simulated
    view_col, slice_col = st.columns([2, 3])
    view = view_col.segmented_control("View", F.VIEWS, format_func=F.VIEW_TITLES.get, default="axial",
                                      key="transport_view") or "axial"
    n = F.n_slices(tgt.moving.shape, view)
    index = slice_col.slider("Slice", 0, n - 1, n // 2, key=f"transport_slice_{view}")
    panels = [(f"source {source} ED", src.moving, src.moving_label),
              (f"source {source} ES", src.fixed, src.fixed_label),
              (f"target {target} ED", tgt.moving, tgt.moving_label),
              (f"target {target}: simulated ES", sim.warped, sim.warped_label),
              (f"target {target} ES (real)", tgt.fixed, tgt.fixed_label)]
    st.plotly_chart(F.transport_figure(panels, view, index, tgt.spacing), key="transport_figure")


@W.guard
def main() -> None:
    checkpoint, root = C.active_checkpoint(), str(H.cohort_root())
    left, right = st.columns(2)
    with left:
        source = W.subject_select("Source: whose motion", key="transport_source", prefer_group="DCM")
    with right:
        target = W.subject_select("Target: whose anatomy", key="transport_target", prefer_group="NOR")
    transported = C.transport_subjects(checkpoint, root, source, target)
    _images(transported, source, target)
    st.subheader("Volumes and ejection fractions")
    st.dataframe(transported.table.style.format(precision=1, na_rep="–"))
    st.caption("Volumes in mL, ejection fractions in %, from the segmentations on the model grid: the simulated ES "
               "volume is the target's ED segmentation carried along by the transported deformation.")
    _group_table(checkpoint, root)


@W.guard
def _group_table(checkpoint: str, root: str) -> None:
    st.subheader("Every group's motion on every group's anatomy")
    st.caption(f"The codes of {C.TRANSPORT_SOURCES} subjects per group (rows) decoded for the ED images of "
               f"{C.TRANSPORT_TARGETS} subjects per group (columns): the mean LVEF of the simulated ES. If the code "
               "carries the motion, each row keeps its group's ejection fraction whatever the anatomy (DCM and MINF "
               "low, NOR, HCM and RV normal or high).")
    if not C.transport_study_cached(checkpoint, root) and not st.button(
            "Compute the table (about a minute on a laptop CPU, then cached on disk)", key="transport_table_run"):
        return
    pairs = C.group_transport(checkpoint, root)
    st.plotly_chart(F.transport_matrix_figure(group_matrix(pairs, "LVEF")), key="transport_matrix")
    st.caption("Real LVEF of the targets (%): " + ", ".join(f"{g} {v:.0f}" for g, v in target_lvef(pairs).items())
               + f". {len(pairs[pairs['source'] != pairs['target']])} transported pairs.")


main()
