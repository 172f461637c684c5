"""Embedding page: the test cohort's codes in 2-D, coloured by disease group; click a subject to register it; the
SVM classification of the groups from the codes (leak-free and the paper's protocol)."""
from __future__ import annotations

import numpy as np
import streamlit as st

from cvae import figures as F
from cvae.app import cached as C
from cvae.app import cohort as H
from cvae.app import widgets as W
from cvae.latent.table import latent_dim_of

METHOD_NAMES = {"cca": "CCA", "umap": "UMAP", "pca": "PCA"}
HOVER = ("LVEF", "LVEDV", "LVM", "RVEF", "MaxWT")
REGISTER_PAGE = "pages/register.py"

W.ensure_app_entry()
st.title("Embedding")


def _open_on_register(subject: str) -> None:
    st.session_state["register_subject"] = subject
    st.session_state["register_source"] = "cohort subject (ED → ES)"
    st.switch_page(REGISTER_PAGE)


@W.guard
def _projection(checkpoint: str, root: str) -> None:
    table = C.cohort_table(checkpoint, root)
    st.caption(f"Each point is one test subject: the code μ of its (ES, ED) pair, projected from "
               f"{latent_dim_of(table)} to 2 dimensions. If the motion codes carry the disease, the groups separate.")
    method = st.segmented_control("Projection", list(METHOD_NAMES), format_func=METHOD_NAMES.get, default="cca",
                                  key="embedding_method") or "cca"
    with st.expander("What do the projections do?"):
        st.markdown(
            "* **CCA** (canonical correlation analysis) finds the directions of the code space that correlate most "
            "with the group labels: supervised, so separation is expected; with 5 groups at most 4 such "
            "directions exist.\n"
            "* **UMAP** keeps neighbours together without looking at the labels: unsupervised.\n"
            "* **PCA** shows the two directions of largest variance: unsupervised and linear.")
    points = C.projection(checkpoint, root, method).merge(table[["subject", *HOVER]], on="subject", how="left")
    names = {"cca": ("CCA 1", "CCA 2"), "umap": ("UMAP 1", "UMAP 2"), "pca": ("PC 1", "PC 2")}[method]
    figure = F.embedding_figure(points["x"], points["y"], points["group"], points["subject"],
                                hover={f"{k} ({u})": points[k] for k, u in
                                       zip(HOVER, ("%", "mL", "g", "%", "mm"))}, axis_titles=names)
    event = st.plotly_chart(figure, on_select="rerun", selection_mode="points", key=f"embedding_chart_{method}")
    subject = W.selected_subject(event)
    if subject is not None:
        _open_on_register(subject)
    left, right = st.columns([2, 1], vertical_alignment="bottom")
    pick = left.selectbox("…or pick a subject", points["subject"].tolist(), key="embedding_pick")
    if right.button("Open on the Register page", icon=":material/open_in_new:", key="embedding_open"):
        _open_on_register(pick)
    st.caption("Click a point to open that subject on the Register page. Hover for its clinical measures "
               "(from the segmentations).")


@W.guard
def _classification(checkpoint: str, root: str) -> None:
    st.subheader("Telling the groups apart from the codes")
    report = C.classification(checkpoint, root)
    cols = st.columns(3)
    cols[0].metric(f"leak-free accuracy ({report.n_folds}-fold)",
                   f"{100 * report.accuracy_mean:.0f} ± {100 * report.accuracy_std:.0f} %")
    cols[1].metric("paper's protocol (leaky)",
                   f"{100 * report.paper_accuracy_mean:.0f} ± {100 * report.paper_accuracy_std:.0f} %")
    cols[2].metric("chance (largest group)", f"{100 * report.chance:.0f} %")
    left, right = st.columns([3, 2], gap="large")
    left.plotly_chart(F.confusion_figure(np.asarray(report.confusion), report.groups,
                                         "leak-free confusion matrix (counts over all folds)"),
                      key="embedding_confusion")
    with right:
        st.markdown("**How is the accuracy measured?**")
        st.markdown(
            f"An SVM (RBF kernel) classifies the {report.n_subjects} subjects from their {report.n_components} CCA "
            f"components, in stratified {report.n_folds}-fold cross-validation. **Leak-free**: the CCA is fitted "
            "inside each training fold, so the test fold's labels are never seen. **Paper's protocol**: the CCA is "
            "fitted on all subjects first (as in Krebs et al.), which lets the labels of the test folds leak into "
            "the features and inflates the accuracy.")
        for note in report.notes:
            st.caption(note)


@W.guard
def main() -> None:
    checkpoint, root = C.active_checkpoint(), str(H.cohort_root())
    _projection(checkpoint, root)
    _classification(checkpoint, root)


main()
