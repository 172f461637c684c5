"""Latent walk page: one slider per latent dimension, the decoded deformation of a subject's ED image, an animation
along one dimension and the posterior uncertainty map."""
from __future__ import annotations

import numpy as np
import streamlit as st

from cvae import figures as F
from cvae.app import cached as C
from cvae.app import cohort as H
from cvae.app import widgets as W
from cvae.latent.priors import CodePrior

#: Slider range of every latent coordinate (the prior N(0, 1) puts 99.9 % of its mass inside).
LIMIT = 3.5
STEP = 0.05

W.ensure_app_entry()
st.title("Latent walk")
st.caption("Every deformation the model can produce is decoded from a code z of a few numbers. Here you set z by "
           "hand and see the deformation it gives to this subject's ED image. At the subject's own code "
           "(μ of q(z | ES, ED), *reset*; rounded to the sliders' steps of 0.05), the decoded deformation is the "
           "registration to its ES frame.")


def _key(i: int) -> str:
    return f"walk_z_{i}"


def _set_code(z: np.ndarray) -> None:
    for i, value in enumerate(np.clip(z, -LIMIT, LIMIT)):
        st.session_state[_key(i)] = float(round(value / STEP) * STEP)


def _code(d: int) -> tuple[float, ...]:
    return tuple(float(st.session_state[_key(i)]) for i in range(d))


def _draw(prior: CodePrior) -> None:
    _set_code(prior.draw(1)[0].numpy())


@W.guard
def _sample_like_cohort(checkpoint: str, root: str) -> None:
    _draw(C.cohort_code_prior(checkpoint, root))


@st.fragment
@W.guard
def _explorer(checkpoint: str, root: str, subject: str, d: int) -> None:
    """Buttons, sliders and the decoded deformation; a fragment, so a slider move reruns only this part."""
    mu, sigma = C.subject_posterior(checkpoint, root, subject)
    buttons = st.columns(4)
    buttons[0].button("Reset to the subject's code μ", on_click=_set_code, args=(mu,), icon=":material/restart_alt:",
                      key="walk_reset")
    buttons[1].button("Randomise: z ~ q(z | ES, ED)", icon=":material/shuffle:", key="walk_posterior",
                      on_click=_draw, args=(CodePrior.posterior(mu, sigma),),
                      help="a sample of the posterior: another plausible registration of this pair")
    buttons[2].button("Sample from the prior N(0, I)", icon=":material/casino:", key="walk_prior",
                      on_click=_draw, args=(CodePrior.standard(d),),
                      help="a random motion of the model's repertoire, applied to this heart (the paper's prior; "
                      "some of its codes lie where no subject's code is)")
    buttons[3].button("Sample like the cohort", icon=":material/groups:", on_click=_sample_like_cohort,
                      args=(checkpoint, root), key="walk_cohort",
                      help="z from the Gaussian fitted to the codes of the cohort's subjects (their aggregate "
                      "posterior): motions like the cohort's, applied to this heart")
    columns = st.columns(4)
    for i in range(d):
        columns[i % 4].slider(f"z{i + 1}", -LIMIT, LIMIT, step=STEP, key=_key(i))
    z = _code(d)
    pair = C.pair_for(checkpoint, root, subject)
    decoded = C.decode_subject(checkpoint, root, subject, z)
    view_col, slice_col = st.columns([2, 3])
    view = view_col.segmented_control("View", F.VIEWS, format_func=F.VIEW_TITLES.get, default="axial",
                                      key="walk_view") or "axial"
    n = F.n_slices(pair.moving.shape, view)
    index = slice_col.slider("Slice", 0, n - 1, n // 2, key=f"walk_slice_{view}")
    st.plotly_chart(F.deformation_figure(pair.moving, decoded.warped, decoded.displacement, decoded.jacobian,
                                         pair.spacing, view, index, moving_label=pair.moving_label,
                                         warped_label=decoded.warped_label), key="walk_figure")
    if decoded.measures:
        m = decoded.measures
        cols = st.columns(4)
        cols[0].metric("LV volume ED", f"{m['LVEDV']:.0f} mL")
        cols[1].metric("LV volume, deformed", f"{m['LVESV']:.0f} mL")
        cols[2].metric("LV ejection fraction", f"{m['LVEF']:.0f} %")
        cols[3].metric("decoding time", f"{decoded.seconds:.2f} s")
        st.caption("The ED segmentation carried along by the decoded deformation gives a simulated ES volume, "
                   "hence an ejection fraction: which latent directions make the heart contract more?")


@W.guard
def _animation(checkpoint: str, root: str, subject: str, d: int) -> None:
    st.subheader("Animation along one dimension")
    cols = st.columns([1, 1, 2])
    dim = cols[0].selectbox("Dimension", range(d), format_func=lambda i: f"z{i + 1}", key="walk_anim_dim")
    frames = cols[1].select_slider("Frames", [5, 7, 9, 11], value=7, key="walk_anim_frames")
    cols[2].caption("The other coordinates stay at the sliders' values; this dimension runs from −3 to 3. "
                    "Decoding takes about a second per frame on a CPU.")
    if not st.toggle("Build the animation", key="walk_anim_on"):
        return
    view = st.session_state.get("walk_view", "axial")
    index = st.session_state.get(f"walk_slice_{view}")
    pair = C.pair_for(checkpoint, root, subject)
    n = F.n_slices(pair.moving.shape, view)
    index = n // 2 if index is None else int(index)
    values = tuple(float(v) for v in np.linspace(-3.0, 3.0, frames))
    slices = C.walk_slices(checkpoint, root, subject, _code(d), int(dim), values, view, index)
    st.plotly_chart(F.walk_animation(slices, values, f"z{dim + 1}", F.view_aspect(view, pair.spacing)),
                    key="walk_animation")


@W.guard
def _uncertainty(checkpoint: str, root: str, subject: str) -> None:
    st.subheader("Posterior uncertainty")
    st.caption("The encoder gives a distribution q(z | ES, ED), not one code. Decoding k codes drawn from it and "
               "measuring how much the displacement varies shows where the registration is unsure: typically "
               "where the image has no contrast to anchor it.")
    cols = st.columns([1, 3])
    k = cols[0].select_slider("Samples k", [4, 8, 16, 32], value=8, key="walk_k")
    if not cols[1].toggle("Compute the uncertainty map", key="walk_unc_on"):
        return
    std = C.posterior_std(checkpoint, root, subject, int(k))
    pair = C.pair_for(checkpoint, root, subject)
    n = F.n_slices(std.shape, "axial")
    index = st.slider("Axial slice", 0, n - 1, n // 2, key="walk_unc_slice")
    st.plotly_chart(F.uncertainty_figure(F.extract_slice(pair.moving, "axial", index),
                                         F.extract_slice(std, "axial", index), F.view_aspect("axial", pair.spacing)),
                    key="walk_uncertainty")
    st.caption(f"Mean std over the volume: {float(std.mean()):.3f} mm; largest: {float(std.max()):.2f} mm.")


@W.guard
def main() -> None:
    checkpoint, root = C.active_checkpoint(), str(H.cohort_root())
    subject = W.subject_select("Subject", key="walk_subject")
    model, _ = C.get_model(checkpoint)
    d = model.config.latent_dim
    if st.session_state.get("walk_for") != (checkpoint, root, subject) or _key(0) not in st.session_state:
        _set_code(C.subject_posterior(checkpoint, root, subject)[0])
        st.session_state["walk_for"] = (checkpoint, root, subject)
    _explorer(checkpoint, root, subject, d)
    _animation(checkpoint, root, subject, d)
    _uncertainty(checkpoint, root, subject)


main()
