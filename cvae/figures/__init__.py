"""Plotly figure builders for the app and the notebooks: plain functions of numpy arrays, no Streamlit.

``slices`` (views, 2-D cuts, traces), ``volumes`` (the registration viewer and the other image figures), ``charts``
(cohort-level figures and the method's schematic), ``motion`` (a cardiac cycle: the cine, its animation, volume
curves, the code trajectory). Every public name is importable from here (``from cvae import figures as F;
F.registration_figure(...)``). The evaluation's box plots live with the evaluation
(:mod:`cvae.evaluation.figures`).
"""
from __future__ import annotations

from cvae.figures.charts import (GROUP_COLOURS, confusion_figure, embedding_figure, method_figure, timing_figure,
                                 transport_matrix_figure)
from cvae.figures.slices import (JACOBIAN_COLOURS, LABEL_STYLE, VIEW_TITLES, VIEWS, contour_traces, deformed_grid_lines,
                                 displacement_magnitude_mm, extract_slice, folding_trace, grid_trace, image_trace,
                                 in_plane_displacement, jacobian_range, jacobian_trace, n_slices, view_aspect,
                                 view_axes)
from cvae.figures.volumes import (RegistrationVolumes, deformation_figure, registration_figure, transport_figure,
                                  uncertainty_figure, walk_animation)
from cvae.figures.motion import cine_gif, cycle_animation, trajectory_figure, volume_curves_figure

__all__ = [
    "VIEWS", "VIEW_TITLES", "LABEL_STYLE", "GROUP_COLOURS", "JACOBIAN_COLOURS", "RegistrationVolumes", "view_axes",
    "view_aspect", "n_slices", "extract_slice", "in_plane_displacement", "displacement_magnitude_mm",
    "deformed_grid_lines", "jacobian_range", "image_trace", "contour_traces", "grid_trace", "jacobian_trace",
    "folding_trace", "registration_figure", "deformation_figure", "walk_animation", "uncertainty_figure",
    "transport_figure", "embedding_figure", "confusion_figure", "transport_matrix_figure", "timing_figure",
    "method_figure", "cine_gif", "cycle_animation", "volume_curves_figure", "trajectory_figure",
]
