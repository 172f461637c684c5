"""cvae.figures: slicing per view, the deformed grid, the Jacobian colour scale, folding marks, contours, and the
cohort figures, checked on the figure objects (no browser)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from cvae import figures as F

SHAPE = (12, 10, 6)
SPACING = (1.5, 1.5, 3.15)


def coded_volume(shape=SHAPE) -> np.ndarray:
    """value = 10000 x + 100 y + z: every voxel says where it is."""
    x, y, z = np.indices(shape)
    return (10000 * x + 100 * y + z).astype(np.float64)


def volumes(jacobian: np.ndarray | None = None, shift=(0.0, 0.0, 0.0)) -> F.RegistrationVolumes:
    rng = np.random.default_rng(0)
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[2:10, 2:8, :] = 2
    label[4:8, 3:7, :] = 3
    label[0:2, 0:4, :] = 1
    displacement = np.stack([np.full(SHAPE, s, dtype=np.float32) for s in shift])
    return F.RegistrationVolumes(
        fixed=rng.random(SHAPE, dtype=np.float32), moving=rng.random(SHAPE, dtype=np.float32),
        warped=rng.random(SHAPE, dtype=np.float32), displacement=displacement,
        jacobian=np.ones(SHAPE, dtype=np.float32) if jacobian is None else jacobian, spacing=SPACING,
        fixed_label=label, moving_label=label, warped_label=label)


def traces(fig, kind: str, name: str | None = None) -> list:
    return [t for t in fig.data if t.type == kind and (name is None or t.name == name)]


# ---------------------------------------------------------------------------------------------------------------
# slicing


@pytest.mark.parametrize("view, index", [("axial", 4), ("coronal", 7), ("sagittal", 9)])
def test_extract_slice_returns_the_plane_of_the_view(view, index):
    volume = coded_volume()
    plane = F.extract_slice(volume, view, index)
    rows, cols = plane.shape
    for r in range(rows):
        for c in range(cols):
            x, y, z = {"axial": (c, r, index), "coronal": (c, index, r), "sagittal": (index, c, r)}[view]
            assert plane[r, c] == volume[x, y, z]
    cut, horizontal, vertical = F.view_axes(view)
    assert (rows, cols) == (SHAPE[vertical], SHAPE[horizontal])
    assert F.n_slices(SHAPE, view) == SHAPE[cut]


def test_extract_slice_keeps_channels_and_rejects_bad_input():
    field = np.stack([coded_volume(), -coded_volume(), 2 * coded_volume()])
    plane = F.extract_slice(field, "coronal", 3)
    assert plane.shape == (3, SHAPE[2], SHAPE[0])
    np.testing.assert_array_equal(plane[1], -F.extract_slice(coded_volume(), "coronal", 3))
    with pytest.raises(ValueError, match="outside"):
        F.extract_slice(coded_volume(), "axial", SHAPE[2])
    with pytest.raises(ValueError, match="unknown view"):
        F.extract_slice(coded_volume(), "oblique", 0)
    with pytest.raises(ValueError, match="X, Y, Z"):
        F.extract_slice(np.zeros((4, 4)), "axial", 0)


@pytest.mark.parametrize("view, expected", [("axial", (1.0, 2.0)), ("coronal", (1.0, 3.0)),
                                            ("sagittal", (2.0, 3.0))])
def test_in_plane_displacement_keeps_the_horizontal_and_vertical_components(view, expected):
    field = np.stack([np.full(SHAPE, v, dtype=np.float32) for v in (1.0, 2.0, 3.0)])
    plane = F.in_plane_displacement(field, view, 1)
    assert plane.shape[0] == 2
    assert tuple(float(plane[i].mean()) for i in range(2)) == expected


def test_displacement_magnitude_is_in_mm_for_volumes_and_slices():
    field = np.stack([np.full(SHAPE, v, dtype=np.float32) for v in (1.0, 0.0, 1.0)])
    expected = math.hypot(1.5, 3.15)
    np.testing.assert_allclose(F.displacement_magnitude_mm(field, SPACING), expected, rtol=1e-6)
    np.testing.assert_allclose(F.displacement_magnitude_mm(F.extract_slice(field, "axial", 2), SPACING), expected,
                               rtol=1e-6)
    assert F.view_aspect("coronal", SPACING) == pytest.approx(3.15 / 1.5)
    assert F.view_aspect("axial", SPACING) == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------------------------
# deformed grid, Jacobian, contours


@pytest.mark.parametrize("rows, cols, step", [(10, 17, 4), (32, 128, 8), (7, 7, 16)])
def test_deformed_grid_has_one_line_per_grid_row_and_column(rows, cols, step):
    xs, ys = F.deformed_grid_lines(np.zeros((2, rows, cols), dtype=np.float32), step)
    assert int(np.isnan(xs).sum()) == math.ceil(cols / step) + math.ceil(rows / step)
    assert np.array_equal(np.isnan(xs), np.isnan(ys))
    vertical = [segment for segment in np.split(xs, np.flatnonzero(np.isnan(xs)) + 1) if segment.size]
    assert [float(seg[0]) for seg in vertical[:math.ceil(cols / step)]] == list(map(float, range(0, cols, step)))


def test_deformed_grid_moves_with_the_displacement():
    u = np.zeros((2, 9, 9), dtype=np.float32)
    u[0], u[1] = 0.5, -1.25
    xs, ys = F.deformed_grid_lines(u, 3)
    xs0, ys0 = F.deformed_grid_lines(np.zeros_like(u), 3)
    finite = ~np.isnan(xs)
    np.testing.assert_allclose(xs[finite] - xs0[finite], 0.5)
    np.testing.assert_allclose(ys[finite] - ys0[finite], -1.25)
    with pytest.raises(ValueError):
        F.deformed_grid_lines(u, 0)


def test_jacobian_panel_is_centred_on_one_and_flags_folding():
    jacobian = np.ones(SHAPE, dtype=np.float32)
    jacobian[3, 4, 2] = -0.5      # folding in axial slice 2 at row y=4, column x=3
    jacobian[7, 1, 2] = 0.0       # det J = 0 counts as folding
    jacobian[5, 5, 2] = 1.6       # expansion, not flagged
    jacobian[1, 1, 4] = -2.0      # folding in another slice
    fig = F.registration_figure(volumes(jacobian), "axial", 2)
    (heat,) = traces(fig, "heatmap", "det J")
    assert heat.zmid == 1.0
    assert (heat.zmin + heat.zmax) / 2 == pytest.approx(1.0)
    assert heat.zmin <= -0.5 and heat.zmax >= 1.6
    assert heat.colorscale[0][1] != heat.colorscale[-1][1]  # a diverging scale, not a constant one
    (folds,) = traces(fig, "scatter", "det J ≤ 0 (folding)")
    assert sorted(zip(folds.x, folds.y)) == [(3, 4), (7, 1)]
    assert folds.showlegend


def test_jacobian_range_is_symmetric_about_one_and_clipped():
    assert F.jacobian_range(np.full((4, 4), 1.0)) == (0.75, 1.25)
    assert F.jacobian_range(np.array([0.2, 1.0, 1.5])) == pytest.approx((0.2, 1.8))
    assert F.jacobian_range(np.array([-9.0, 1.0])) == (-1.0, 3.0)


def test_registration_figure_shows_the_requested_slice_contours_and_grid():
    v = volumes(shift=(0.5, 0.0, 0.0))
    fig = F.registration_figure(v, "coronal", 3, grid_step=4)
    heatmaps = {t.name: t for t in traces(fig, "heatmap")}
    assert set(heatmaps) == {"fixed", "moving", "warped", "difference", "|u|", "det J"}
    np.testing.assert_array_equal(heatmaps["fixed"].z, F.extract_slice(v.fixed, "coronal", 3))
    np.testing.assert_allclose(heatmaps["difference"].z, F.extract_slice(v.fixed - v.warped, "coronal", 3),
                               atol=1e-6)
    np.testing.assert_allclose(heatmaps["|u|"].z, 0.75, rtol=1e-6)  # 0.5 voxel x 1.5 mm
    contours = traces(fig, "contour")
    # fixed, moving and warped panels each hold the three structures, plus the dotted fixed ones on the warped panel
    assert len(contours) == 4 * 3
    assert {t.name for t in contours} == {name for name, _ in F.LABEL_STYLE.values()}
    assert sum(t.line.dash == "dot" for t in contours) == 3
    (grid,) = traces(fig, "scatter", "deformed grid")
    assert int(np.isnan(np.asarray(grid.x, dtype=float)).sum()) == math.ceil(SHAPE[0] / 4) + math.ceil(SHAPE[2] / 4)
    assert grid.xaxis == "x2"  # drawn on the moving image
    other = F.registration_figure(v, "coronal", 6, grid_step=4)
    assert not np.array_equal(other.data[0].z, fig.data[0].z)


def test_contours_only_for_present_labels_and_none_without_labels():
    label = np.zeros((8, 8), dtype=np.uint8)
    label[2:5, 2:5] = 3
    (only,) = F.contour_traces(label)
    assert only["name"] == "LV cavity" and only["contours"]["start"] == 0.5
    v = volumes()
    v.fixed_label = v.moving_label = v.warped_label = None
    assert traces(F.registration_figure(v, "axial", 0), "contour") == []


def test_deformation_and_transport_figures_have_one_panel_per_image():
    v = volumes()
    fig = F.deformation_figure(v.moving, v.warped, v.displacement, v.jacobian, SPACING, "sagittal", 5,
                               moving_label=v.moving_label, warped_label=v.warped_label)
    assert len(traces(fig, "heatmap")) == 4
    assert fig.layout.yaxis.scaleratio == pytest.approx(3.15 / 1.5)
    panels = [("a", v.fixed, v.fixed_label), ("b", v.moving, None), ("c", v.warped, v.warped_label)]
    fig = F.transport_figure(panels, "axial", 1, SPACING)
    assert [a.text for a in fig.layout.annotations] == ["a", "b", "c"]
    assert {t.xaxis for t in traces(fig, "contour")} == {"x", "x3"}


# ---------------------------------------------------------------------------------------------------------------
# latent and cohort figures


def test_walk_animation_has_one_frame_and_slider_step_per_value():
    slices = [np.full((5, 6), v, dtype=np.float32) for v in (0.1, 0.5, 0.9)]
    fig = F.walk_animation(slices, [-1.0, 0.0, 1.0], "z3")
    assert [f.name for f in fig.frames] == ["-1.00", "+0.00", "+1.00"]
    assert [s.label for s in fig.layout.sliders[0].steps] == ["-1.00", "+0.00", "+1.00"]
    np.testing.assert_allclose(fig.frames[2].data[0].z, 0.9)
    with pytest.raises(ValueError, match="one slice per value"):
        F.walk_animation(slices, [0.0], "z1")


def test_embedding_figure_groups_points_and_carries_subjects():
    groups = ["DCM", "NOR", "DCM", "RV"]
    fig = F.embedding_figure([0, 1, 2, 3], [3, 2, 1, 0], groups, ["p1", "p2", "p3", "p4"],
                             hover={"LVEF (%)": [20.0, 60.0, 25.0, 55.0]})
    assert [t.name for t in fig.data] == ["NOR", "DCM", "RV"]  # ACDC group order
    dcm = fig.data[1]
    assert list(dcm.x) == [0, 2]
    assert [c[0] for c in dcm.customdata] == ["p1", "p3"]
    assert [c[1] for c in dcm.customdata] == [20.0, 25.0]
    assert "LVEF (%)" in dcm.hovertemplate
    with pytest.raises(ValueError):
        F.embedding_figure([0, 1], [0], ["NOR"], ["p1"])


def test_confusion_timing_and_method_figures():
    fig = F.confusion_figure(np.array([[3, 1], [0, 4]]), ["NOR", "DCM"])
    np.testing.assert_array_equal(fig.data[0].z, [[3, 1], [0, 4]])
    with pytest.raises(ValueError):
        F.confusion_figure(np.eye(3), ["NOR", "DCM"])
    fig = F.timing_figure({"cvae": 0.3, "demons": 80.0})
    assert fig.layout.xaxis.type == "log" and list(fig.data[0].x) == [0.3, 80.0]
    assert len(F.method_figure().layout.shapes) == 7
