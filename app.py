"""cvae-reg app: ``streamlit run app.py`` (binds 127.0.0.1, see ``.streamlit/config.toml``).

This file is the entry point: it sets up the navigation and the sidebar (checkpoint picker, cohort) shared by every
page, and holds the home page. The pages live in ``pages/``; the numerics in ``cvae/`` (``cvae.app`` for the
cached computations and widgets, ``cvae.figures`` for the Plotly figures).
"""
from __future__ import annotations

import streamlit as st

from cvae.app import cached as C
from cvae.app import checkpoints as K
from cvae.app import cohort as H
from cvae.app import widgets as W
from cvae.data.labels import GROUP_NAMES, GROUPS
from cvae.figures import method_figure

st.set_page_config(page_title="cvae-reg", page_icon="🫀", layout="wide")

#: (file, title, icon, what it does) of every page, in menu order.
PAGES: tuple[tuple[str, str, str, str], ...] = (
    ("pages/register.py", "Register", ":material/join_inner:",
     "Register a subject's ED frame to its ES frame (or two uploaded NIfTI files) and inspect the result slice by "
     "slice: warped image, displacement, deformed grid, Jacobian, Dice / HD95"),
    ("pages/latent_walk.py", "Latent walk", ":material/tune:",
     "Move along the latent dimensions and watch the decoded deformation of a heart change; posterior uncertainty"),
    ("pages/transport.py", "Transport", ":material/swap_horiz:",
     "Apply the motion of one subject (e.g. a dilated heart) to another subject's anatomy: a simulated ES frame"),
    ("pages/motion.py", "Motion", ":material/ecg_heart:",
     "A whole cardiac cycle: the cine tracked frame by frame, volume curves, the code trajectory, cycles "
     "simulated from ED, the motion on another heart"),
    ("pages/embedding.py", "Embedding", ":material/scatter_plot:",
     "The test cohort's codes in 2-D (CCA, UMAP, PCA), coloured by disease; how well an SVM tells the groups apart"),
    ("pages/benchmark.py", "Benchmark", ":material/leaderboard:",
     "The evaluation: this model against demons, VoxelMorph and no registration (Dice, HD95, folding, time)"),
)


def _checkpoint_card() -> None:
    st.subheader("Checkpoint")
    name = C.active_checkpoint()
    try:
        card = K.model_card(name)
    except ValueError as exc:
        W.show_error(exc, "home: checkpoint")
        st.caption("Pages that need the model show this message too; the shipped checkpoint is "
                   "`checkpoints/synthetic-acdc` (train one with `cvae train`, or set `CVAE_CHECKPOINT`).")
        return
    config = card["config"]
    model, training = config.get("model", {}), config.get("training", {})
    st.markdown(f"**{name}**" + ("" if str(card["folder"]) == name else f" · `{card['folder']}`"))
    grid = " × ".join(str(n) for n in model.get("image_size", []))
    spacing = " × ".join(f"{s:g}" for s in config.get("spacing", []))
    st.markdown(f"* latent code: **{model.get('latent_dim', '?')}** dimensions\n"
                f"* grid: **{grid}** voxels of **{spacing}** mm\n"
                f"* smoothing σ = {model.get('sigma_smooth', '?')} voxels, {model.get('n_steps', '?')} squaring "
                f"steps, λ = {model.get('lam', '?')}")
    facts = [f"fine-tuned from `{training['init']}`"] if training.get("init") else []
    if training.get("steps_done") is not None:
        facts.append(f"{training['steps_done']} training steps")
    if training.get("wall_time_s") is not None:
        facts.append(f"{training['wall_time_s'] / 3600:.1f} h of training")
    if training.get("data"):
        facts.append(f"data `{training['data']}`")
    facts.append(f"cvae-reg {config.get('version', '?')}")
    st.caption(" · ".join(facts))
    if training.get("seg_weight"):
        st.caption(f"Trained with the labels in the loss (Dice weight {training['seg_weight']:g}): not the paper's "
                   "unsupervised method; its model card says how it compares.")
    if card["readme"]:
        with st.expander("Model card (README.md)"):
            st.markdown(card["readme"])
    with st.expander("config.json"):
        st.json(config, expanded=1)


def _cohort_card() -> None:
    st.subheader("Cohort")
    root = H.cohort_root()
    if H.cohort_missing(root):
        if not H.is_default_cohort(root):
            st.error(f"No patient folders under `{root}` (set by `CVAE_DATA`): point it to an ACDC-style folder "
                     "(`training/patientNNN/`, `testing/patientNNN/`).", icon="⚠️")
            return
        n = H.DEMO_COHORT["n_test"]
        bar = st.progress(0.0, text=f"First start: writing the synthetic demo cohort ({n} subjects) to `{root}`…")
        H.create_demo_cohort(root, progress=lambda done, total: bar.progress(
            done / total, text=f"Writing the synthetic demo cohort: {done} / {total} subjects"))
        bar.empty()
        st.success(f"Wrote the demo cohort to `{root}` (`make cohort` writes the full 234 + 100 subjects).")
    table = C.cohort_subjects(root)
    st.markdown(f"`{root}` · **{len(table)}** subjects")
    counts = table.pivot_table(index="split", columns="group", values="subject", aggfunc="count", fill_value=0)
    counts = counts.reindex(columns=[g for g in GROUPS if g in counts.columns])
    st.dataframe(counts, width="content")
    st.caption(" · ".join(f"**{g}** {GROUP_NAMES[g]}" for g in GROUPS))


def home() -> None:
    """Home page: what the method does, the active checkpoint and cohort, links to the pages."""
    st.title("cvae-reg · probabilistic registration of the beating heart")
    d = K.latent_size(C.active_checkpoint())
    latent = "a few" if d is None else str(d)
    st.markdown(
        "Registration finds the motion that maps one image onto another. Here a **conditional variational "
        "autoencoder** (Krebs et al. 2018/2019) looks at a pair of cardiac MRI volumes: the end-diastolic frame "
        "(ED, the *moving* image M) and the end-systolic frame (ES, the *fixed* image F). The encoder compresses "
        f"the motion between them into a small **code z** ({latent} numbers); the decoder turns z, given M, into a "
        "smooth velocity field whose exponential is a **diffeomorphism** φ: smooth, invertible, without folding. "
        "Warping M by φ reproduces F. Because the codes follow a simple prior N(0, I), the latent space can be "
        "explored: sample motions, walk along one dimension, carry one heart's motion to another heart, or see "
        "how diseases cluster.")
    st.plotly_chart(method_figure(d), config={"displayModeBar": False, "staticPlot": True})
    with st.expander("How to read the pages"):
        st.markdown(
            "* Volumes are shown as 2-D slices: **axial** is the short-axis plane of the acquisition, "
            "**coronal** and **sagittal** cut across the slices (long axis; slices are 3.15 mm apart, pixels "
            "1.5 mm).\n"
            "* The **displacement** u says, for each point x of the fixed image, where to look in the moving "
            "image: warped(x) = M(x + u(x)).\n"
            "* The **Jacobian determinant** det J of φ measures local volume change: > 1 expansion, < 1 "
            "compression, ≤ 0 folding (physically impossible; a diffeomorphism has none).\n"
            "* Segmentation contours: <span style='color:#29b6f6'>RV cavity</span>, "
            "<span style='color:#ffa726'>LV myocardium</span>, <span style='color:#ef5350'>LV cavity</span>.",
            unsafe_allow_html=True)
    left, right = st.columns(2, gap="large")
    with left:
        W.guard(_checkpoint_card)()
    with right:
        W.guard(_cohort_card)()
    st.subheader("Pages")
    columns = st.columns(len(PAGES))
    for column, (path, title, icon, text) in zip(columns, PAGES):
        with column.container(border=True, height="stretch"):
            st.page_link(path, label=title, icon=icon)
            st.caption(text)


def sidebar() -> None:
    """Checkpoint picker and cohort path, shared by every page."""
    with st.sidebar:
        choices = K.checkpoint_choices()
        st.selectbox("Checkpoint", choices, key="checkpoint",
                     help="Named checkpoints are looked up in `checkpoints/` (and `$CVAE_CHECKPOINTS`); "
                          "`CVAE_CHECKPOINT` sets the default.")
        st.caption(f"Cohort: `{H.cohort_root()}`  \n(set `CVAE_DATA` to use ACDC)")


navigation = st.navigation([st.Page(home, title="Home", icon=":material/home:", default=True)]
                           + [st.Page(path, title=title, icon=icon) for path, title, icon, _ in PAGES])
sidebar()
navigation.run()
