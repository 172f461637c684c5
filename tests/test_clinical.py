"""Clinical measures on analytic label maps whose volumes, ejection fractions and wall thickness are known."""
from __future__ import annotations

import math

import numpy as np
import pytest

from cvae.evaluation.clinical import (
    MEASURE_UNITS,
    body_surface_area,
    clinical_measures,
    label_volumes_ml,
    max_wall_thickness_mm,
)

SPACING = (1.0, 1.0, 10.0)
N_SLICES = 8


def shell(r_cavity: float, r_epi: float, spacing=SPACING, shape=(128, 128, N_SLICES), rv_box: int = 0) -> np.ndarray:
    """Cylinder shell along Z: LV cavity (3) inside radius ``r_cavity`` mm, myocardium (2) out to ``r_epi`` mm, and
    an optional ``rv_box`` x 20-pixel RV block (1) beside it; centre off the pixel grid."""
    x = (np.arange(shape[0]) - 60.3) * spacing[0]
    y = (np.arange(shape[1]) - 63.7) * spacing[1]
    r = np.hypot(x[:, None], y[None, :])
    plane = np.where(r < r_cavity, 3, np.where(r < r_epi, 2, 0)).astype(np.uint8)
    plane[5 : 5 + rv_box, 5:25] = 1
    return np.repeat(plane[:, :, None], shape[2], axis=2)


def cylinder_ml(radius: float, height: float = N_SLICES * SPACING[2]) -> float:
    return math.pi * radius**2 * height / 1000.0


def test_label_volumes_count_voxels_times_voxel_volume():
    label = np.zeros((10, 12, 4), dtype=np.uint8)
    label[:5, :6, :2] = 3  # 60 voxels
    label[5:, :, :] = 2  # 5 * 12 * 4 = 240 voxels
    label[0, 11, 3] = 1
    volumes = label_volumes_ml(label, (1.5, 1.5, 10.0))
    assert volumes["LV cavity"] == pytest.approx(60 * 22.5 / 1000)
    assert volumes["LV myocardium"] == pytest.approx(240 * 22.5 / 1000)
    assert volumes["RV"] == pytest.approx(22.5 / 1000)


def test_body_surface_area_is_mosteller():
    assert body_surface_area(180, 80) == pytest.approx(2.0)
    assert body_surface_area(160, 50) == pytest.approx(math.sqrt(160 * 50 / 3600))
    with pytest.raises(ValueError, match="positive"):
        body_surface_area(0, 70)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 10.0), (1.5625, 1.5625, 10.0), (1.37, 1.37, 5.0), (1.2, 1.6, 8.0)])
@pytest.mark.parametrize("thickness", [6.0, 10.0, 17.0])
def test_max_wall_thickness_of_a_cylinder_shell(spacing, thickness):
    label = shell(22.0, 22.0 + thickness, spacing=spacing)
    assert max_wall_thickness_mm(label, spacing) == pytest.approx(thickness, abs=0.8)


def test_max_wall_thickness_finds_the_thick_segment():
    label = shell(22.0, 30.0)  # 8 mm wall
    x = np.arange(128) - 60.3
    y = np.arange(128) - 63.7
    r = np.hypot(x[:, None], y[None, :])
    angle = np.degrees(np.arctan2(y[None, :], x[:, None]))
    septum = (np.abs(angle) < 40) & (r >= 22.0) & (r < 40.0)  # 18 mm wall over an 80 degree segment
    label[septum] = 2
    assert max_wall_thickness_mm(label, SPACING) == pytest.approx(18.0, abs=1.0)


def test_max_wall_thickness_skips_oblique_apical_sections():
    label = shell(22.0, 30.0)
    apex = shell(4.0, 25.0)  # a small cavity in a thick cap: the apex cut obliquely
    label[:, :, -1] = apex[:, :, -1]
    assert max_wall_thickness_mm(label, SPACING) == pytest.approx(8.0, abs=0.8)
    assert max_wall_thickness_mm(label, SPACING, min_cavity_fraction=0.0) == pytest.approx(21.0, abs=1.0)


def test_clinical_measures_of_an_incompressible_contraction():
    # ED: cavity 25 mm, wall 10 mm. ES: cavity 15 mm, wall area kept -> epicardium sqrt(15^2 + 35^2 - 25^2).
    r_es_epi = math.sqrt(15**2 + 35**2 - 25**2)
    ed, es = shell(25.0, 35.0, rv_box=30), shell(15.0, r_es_epi, rv_box=12)
    m = clinical_measures(ed, es, SPACING, height_cm=180.0, weight_kg=80.0)
    assert set(m) == set(MEASURE_UNITS)
    assert m["LVEDV"] == pytest.approx(cylinder_ml(25.0), rel=0.01)
    assert m["LVESV"] == pytest.approx(cylinder_ml(15.0), rel=0.02)
    assert m["LVEF"] == pytest.approx(100 * (1 - 15**2 / 25**2), abs=1.0)
    myo = cylinder_ml(35.0) - cylinder_ml(25.0)
    assert m["LVM"] == pytest.approx(1.05 * myo, rel=0.02)
    assert m["RVEDV"] == pytest.approx(30 * 20 * 10 * N_SLICES / 1000)
    assert m["RVEF"] == pytest.approx(100 * (1 - 12 / 30))
    assert m["MaxWT"] == pytest.approx(10.0, abs=0.8)
    assert m["BSA"] == pytest.approx(2.0)
    assert m["LVEDVi"] == pytest.approx(m["LVEDV"] / 2.0)
    assert m["RVEDVi"] == pytest.approx(m["RVEDV"] / 2.0)
    assert m["LVMi"] == pytest.approx(m["LVM"] / 2.0)


def test_missing_labels_and_body_size_give_nan_not_errors():
    ed = shell(25.0, 35.0)
    only_ed = clinical_measures(ed, None, SPACING)
    assert only_ed["LVEDV"] > 0 and only_ed["MaxWT"] > 0
    for key in ("LVESV", "LVEF", "RVESV", "RVEF", "BSA", "LVEDVi", "RVEDVi", "LVMi"):
        assert math.isnan(only_ed[key]), key
    nothing = clinical_measures(None, None, SPACING, 170.0, 70.0)
    assert all(math.isnan(v) for k, v in nothing.items() if k != "BSA")
    assert nothing["BSA"] == pytest.approx(body_surface_area(170.0, 70.0))
    empty = clinical_measures(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8), SPACING)
    assert empty["LVEDV"] == 0 and math.isnan(empty["LVEF"]) and math.isnan(empty["MaxWT"])


def test_bad_inputs_raise_one_line_value_errors():
    with pytest.raises(ValueError, match="spacing"):
        label_volumes_ml(np.zeros((4, 4, 4), np.uint8), (1.0, 1.0))
    with pytest.raises(ValueError, match="3-D"):
        max_wall_thickness_mm(np.zeros((4, 4), np.uint8), SPACING)
    with pytest.raises(ValueError, match="integer"):
        label_volumes_ml(np.full((4, 4, 4), 0.5), SPACING)
