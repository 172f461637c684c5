"""Deterministic synthetic ACDC-like cardiac cine MRI cohort with exact ED -> ES ground truth.

``cvae synth --out DIR [--n-train 234] [--n-test 100] [--seed 0] [--cine] [--workers N]`` writes a cohort in exactly
the ACDC layout, so every reader, trainer and evaluator of the project runs on it unchanged::

    DIR/training/patient001/Info.cfg                    ED: 1 / ES: 12 / Group: DCM / Height: 184.0 / NbFrame: 30 / ...
    DIR/training/patient001/patient001_frame01.nii.gz   ED image, int16 (X, Y, Z)
    DIR/training/patient001/patient001_frame01_gt.nii.gz  ED labels, uint8 (0 bg, 1 RV, 2 LV myo, 3 LV cavity)
    DIR/training/patient001/patient001_frameYY[_gt].nii.gz  ES image and labels (YY = ES frame, 1-based)
    DIR/training/patient001/patient001_gt_displacement.nii.gz  float32 (X, Y, Z, 3), voxel units, ES(x) ~ ED(x + u(x))
    DIR/training/patient001/patient001_4d[_gt][_gt_displacement].nii.gz  with --cine: cine and exact truth per frame
    DIR/testing/patient235/...                          test numbering continues after training

The model (teaching notes)
==========================
**Anatomy** (:mod:`cvae.data.synthetic_anatomy`), in a heart frame with the long axis along the slice axis (base at
Z = 0, apex at negative Z, polar angle 0 pointing to the RV). The LV cavity is a truncated prolate "super-ellipsoid",
radius ``a(TH) (1 - (-Z/c)^p)^(1/p)`` (p 2.2-2.8, slight in-plane ellipticity), inside a myocardial shell whose
thickness varies by segment (low-order harmonics, thinner towards the apex). The RV cavity is a crescent wrapped
around the septum: the radial gap between the LV epicardium and a free wall, widest at the RV centre and closing at
the anterior and inferior insertion points; only its cavity is labelled, its 3 mm free wall images as muscle. Two
papillary muscles sit against the LV wall at mid-ventricular to apical levels: dark like myocardium, labelled LV
cavity (3) as in ACDC. Epicardial fat (bright) wraps the heart; above the base plane the left and right atria and the
aortic root show as blood pools (unlabelled, as in ACDC basal slices). Around the heart: skin and subcutaneous fat,
chest-wall muscle, two dark lungs, mediastinal tissue, spine with spinal canal, descending aorta, and the liver
beyond a dome-shaped diaphragm that reaches the heart only in the apical slices.

**Motion** (:mod:`cvae.data.synthetic_motion`) ED -> ES is defined backwards: ``phi`` maps each ES point to the ED
point it came from, and the ES frame is the ED scene evaluated at ``phi(x)`` (image and labels), so the saved
displacement ``u = phi(x) - x`` is exact.
``phi`` composes (1) longitudinal shortening: the base plane descends by ``base_descent`` towards a nearly fixed apex
(uniform strain in between, fading out above the base and below the apex); (2) twist: base clockwise, apex
counter-clockwise, a few degrees; (3) RV shortening: the septum-to-free-wall gap closes by ``rv_shortening``; (4) an
incompressible radial LV map ``R_ed^2 = s r_es^2 + e Rc^2`` per slice, ``s`` the local longitudinal strain: the
endocardium moves in, the wall thickens and the myocardial volume is conserved exactly. In an infarct territory the
ejected fraction ``e`` drops to ~0 (akinetic). All motion fades to zero 30 mm outside the heart (chest wall, spine and
liver stay still). ``--cine`` scales every motion amount by the ACDC-like phase curve of
:func:`cvae.data.synthetic_cycle.cycle_phase` over the ``NbFrame`` frames.

**Groups** (ACDC definitions; ranges are uniform draws, the geometry is solved to hit them exactly, see
:mod:`cvae.data.synthetic_params`). Indexed volumes are per m^2 of Mosteller BSA from Info.cfg's height and weight.

=====  ==============  ============  ========================  ============  ==========  =========  =====
group  LVEDVi mL/m^2   LVEF %        wall / LV mass            RVEDVi        RVEF %      descent    twist
=====  ==============  ============  ========================  ============  ==========  =========  =====
NOR    62-88           56-70         6.5-8.5 mm, MaxWT < 12    60-86         50-64       10-15 mm   x1
DCM    118-170         14-34         5.5-7.5 mm, spherical     60-100        30-50       3-7 mm     x0.35
HCM    48-72           64-80         septal 17.5-26 mm,        55-85         50-65       6-10 mm    x1.1
                                     LVMi 120-175 g/m^2
MINF   85-125          18-36         7-9 mm; LAD/RCA/LCx       60-95         40-58       3-7 mm     x0.45
                                     territory 40-60 % thinner
                                     and akinetic
RV     58-85           54-66         6.5-8.5 mm                125-185       20-38       8-13 mm    x0.9
=====  ==============  ============  ========================  ============  ==========  =========  =====

Subjects also vary in sex, height, weight (BMI 19-36), heart position and in-plane rotation, heart rate (NbFrame
12-35, ES frame at the end of a 0.30-0.42 s systole), intensities and acquisition.

**Acquisition**: bSSFP-like contrast (blood 1, myocardium 0.27-0.37, fat 0.8-1.05, lung 0.03-0.08, liver 0.35-0.5),
partial volume through 5-10 mm slices (mean of 5 sub-slice samples; labels are taken at the slice centre), in-plane
Gaussian PSF (0.4-0.7 px), a smooth multiplicative coil bias (exp of a random quadratic, about +-20 %), Rician noise
with blood SNR 15-60, rounding to int16. In-plane spacing 1.37-1.68 mm, matrix 216-256 per axis (X and Y differ),
6-18 slices 5-10 mm apart from just above the base to below the apex, an oblique voxel-to-world affine with a random
origin.

**Determinism**: subject ``k`` of a split is drawn from ``SeedSequence(seed, spawn_key=(split, 1, k))`` and its noise
from ``(split, 2, k, frame)``; groups come in blocks of five (one per group, order drawn from ``(split, 0, block)``).
So a subject never depends on how many others are generated, train and test streams are disjoint, and the gzip
streams are written with mtime 0 and no file name: same seed, byte-identical files.

(A subject from its parameters to its files; anatomy, motion, parameters and cycle live in ``synthetic_*`` modules.)
"""
from __future__ import annotations

import gzip
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from cvae.data.acdc import check_splits
from cvae.data.jobs import run_jobs
from cvae.io.atomic import check_writable
from cvae.data.labels import GROUPS
from cvae.data.synthetic_anatomy import NO_TISSUE, body_classes, ed_scene, heart_classes, intensity_table
from cvae.data.cycle_truth import DISPLACEMENT_STEP, TRUTH_SUFFIXES, displacement_steps
from cvae.data.synthetic_cycle import render_cycle
from cvae.data.synthetic_motion import es_to_ed
from cvae.data.synthetic_params import SubjectParams, sample_subject

__all__ = ["SPLITS", "SyntheticSubject", "group_of", "make_subject", "save_subject", "make_cohort", "ed_labels_at",
           "heart_to_voxel", "voxel_to_heart"]

#: Split folders, in the order of their seed-stream keys.
SPLITS: tuple[str, ...] = ("training", "testing")
#: Sub-slice samples averaged through the slice thickness (the middle one gives the labels).
N_SUB = 5
_GZIP_LEVEL = 1


@dataclass
class SyntheticSubject:
    """One generated subject: images int16 and labels uint8 ``(X, Y, Z)``, displacement float32 ``(X, Y, Z, 3)`` in
    voxels (``ES(x) ~ ED(x + u(x))``), the parameters that made it, and with ``cine`` the whole cycle: images int16
    and exact labels uint8 ``(X, Y, Z, T)``, exact ED -> frame displacements float32 ``(X, Y, Z, T, 3)``."""

    split: str
    index: int
    params: SubjectParams
    ed_image: np.ndarray
    es_image: np.ndarray
    ed_label: np.ndarray
    es_label: np.ndarray
    displacement: np.ndarray
    cine: np.ndarray | None = None
    cine_labels: np.ndarray | None = None
    cine_displacement: np.ndarray | None = None

    @property
    def group(self) -> str:
        """ACDC group of the subject."""
        return self.params.group

    @property
    def affine(self) -> np.ndarray:
        """Voxel-to-world affine (4, 4) shared by every file of the subject."""
        return self.params.acquisition.affine

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (mm) along (X, Y, Z)."""
        return self.params.acquisition.spacing

    @property
    def info(self) -> dict[str, object]:
        """The Info.cfg entries: ED, ES, Group, Height, NbFrame, Weight."""
        p = self.params
        return {"ED": 1, "ES": p.es_frame, "Group": p.group, "Height": p.height_cm, "NbFrame": p.nb_frame,
                "Weight": p.weight_kg}


# ---------------------------------------------------------------------------------------------------------------
# seeds and groups


def _split_id(split: str) -> int:
    """Seed-stream key of ``split``, else ``ValueError``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use 'training' or 'testing'")
    return SPLITS.index(split)


def _check_int(name: str, value: object, minimum: int = 0) -> int:
    """``value`` as an int >= ``minimum``, else a one-line ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _rng(seed: int, *key: int) -> np.random.Generator:
    """Generator of the independent stream ``key`` under ``seed``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def group_of(split: str, index: int, seed: int = 0) -> str:
    """Group of subject ``index`` (0-based) of ``split``: every block of five holds each group once (seeded order)."""
    order = _rng(seed, _split_id(split), 0, index // 5).permutation(len(GROUPS))
    return GROUPS[int(order[index % 5])]


# ---------------------------------------------------------------------------------------------------------------
# rendering


def _frame_grid(p: SubjectParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heart-frame coordinates (mm, float32) of the frame grid: in-plane ``x, y`` of shape ``(X, Y)`` and the
    long-axis position ``z`` of every sub-slice sample, shape ``(N_SUB, Z)`` (slice k centred at ``z_top - k dz``)."""
    acq = p.acquisition
    gx = np.arange(acq.shape[0]) * acq.spacing[0] - acq.centre[0]
    gy = np.arange(acq.shape[1]) * acq.spacing[1] - acq.centre[1]
    c, s = math.cos(acq.psi), math.sin(acq.psi)
    x = c * gx[:, None] + s * gy[None, :]
    y = -s * gx[:, None] + c * gy[None, :]
    offsets = ((np.arange(N_SUB) + 0.5) / N_SUB - 0.5) * acq.thickness
    z = acq.z_top - (np.arange(acq.shape[2])[None, :] * acq.spacing[2] + offsets[:, None])
    return x.astype(np.float32), y.astype(np.float32), z.astype(np.float32)


def heart_to_voxel(p: SubjectParams, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Voxel coordinates ``(3, ...)`` on the frame grid of heart-frame points ``(x, y, z)`` in mm (broadcastable)."""
    acq = p.acquisition
    x, y, z = np.broadcast_arrays(x, y, z)
    c, s = math.cos(acq.psi), math.sin(acq.psi)
    return np.stack([
        (acq.centre[0] + c * x - s * y) / acq.spacing[0],
        (acq.centre[1] + s * x + c * y) / acq.spacing[1],
        (acq.z_top - z) / acq.spacing[2],
    ])


def voxel_to_heart(p: SubjectParams, voxels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heart-frame points (mm, float32) of voxel coordinates ``(3, ...)`` on the frame grid (inverse of
    :func:`heart_to_voxel`)."""
    acq = p.acquisition
    gx = voxels[0] * acq.spacing[0] - acq.centre[0]
    gy = voxels[1] * acq.spacing[1] - acq.centre[1]
    c, s = math.cos(acq.psi), math.sin(acq.psi)
    hz = acq.z_top - voxels[2] * acq.spacing[2]
    return (c * gx + s * gy).astype(np.float32), (-s * gx + c * gy).astype(np.float32), hz.astype(np.float32)


def ed_labels_at(p: SubjectParams, voxels: np.ndarray) -> np.ndarray:
    """Exact ED labels (uint8) of the continuous anatomy at voxel coordinates ``(3, ...)`` of the frame grid.

    With ``voxels = grid + u`` (``u`` the saved displacement) this reproduces the ES labels, up to float rounding.
    """
    return ed_scene(*voxel_to_heart(p, np.asarray(voxels, dtype=np.float64)), p.heart, p.body, p.reach)[1]


class _Renderer:
    """Renders the frames of one subject: the static thorax once, then the heart (ED) or the moved region (phase
    ``alpha`` > 0) on top. Tissue codes are ``(N_SUB, X, Y, Z)``; only pixels the heart or the motion reach are
    recomputed, the ED heart with ``(x, y)`` and ``z`` kept on separate axes (cheap long-axis profiles)."""

    def __init__(self, p: SubjectParams) -> None:
        self.p = p
        x, y, z = _frame_grid(p)
        self.x, self.y, self.z = x, y, z
        self.static = body_classes(x[None, :, :, None], y[None, :, :, None], z[:, None, None, :], p.heart, p.body)
        r = np.hypot(x, y)
        self.near = r < p.reach
        self.moving = r < p.taper[1]
        self.table = intensity_table(p.contrast)

    def frame(self, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Relative intensity (slice average) and centre-slice labels ``(X, Y, Z)``; for ``alpha`` > 0 also the
        voxel displacement ``(X, Y, Z, 3)`` of the centre samples (the backward map minus the grid)."""
        p, mid = self.p, N_SUB // 2
        cls = self.static.copy()
        label = np.zeros(p.acquisition.shape, dtype=np.uint8)
        z = self.z[:, None, :]
        displacement = None
        if alpha == 0:
            mask = self.near
            region, region_label = heart_classes(self.x[mask][None, :, None], self.y[mask][None, :, None], z, p.heart)
            region = np.where(region == NO_TISSUE, cls[:, mask, :], region)
        else:
            mask = self.moving
            xm, ym = self.x[mask][None, :, None], self.y[mask][None, :, None]
            hx, hy, hz = es_to_ed(xm, ym, z, p.heart, p.motion, alpha, *p.taper)
            region, region_label = ed_scene(hx, hy, hz, p.heart, p.body, p.reach)
            grid = heart_to_voxel(p, xm[0], ym[0], z[mid])
            displacement = np.zeros((*p.acquisition.shape, 3), dtype=np.float32)
            displacement[mask] = np.moveaxis(heart_to_voxel(p, hx[mid], hy[mid], hz[mid]) - grid, 0, -1)
        cls[:, mask, :] = region
        label[mask] = region_label[mid]
        return self.table[cls].mean(axis=0), label, displacement


def _bias_field(p: SubjectParams) -> np.ndarray:
    """Smooth multiplicative coil sensitivity ``exp(quadratic)`` on the frame grid, float32 ``(X, Y, Z)``."""
    nx, ny, nz = p.acquisition.shape
    b = p.acquisition.bias
    u = np.linspace(-1.0, 1.0, nx)[:, None, None]
    v = np.linspace(-1.0, 1.0, ny)[None, :, None]
    w = np.linspace(-1.0, 1.0, nz)[None, None, :]
    return np.exp(b[0] * u + b[1] * v + b[2] * u * u + b[3] * v * v + b[4] * u * v + b[5] * w).astype(np.float32)


def _acquire(relative: np.ndarray, bias: np.ndarray, p: SubjectParams, rng: np.random.Generator) -> np.ndarray:
    """Scanner image of a relative-intensity volume: PSF blur, bias, scaling, Rician noise, int16."""
    acq = p.acquisition
    signal = ndimage.gaussian_filter(relative, sigma=(acq.psf, acq.psf, 0.0)) * bias * np.float32(acq.blood)
    sigma = np.float32(acq.blood / acq.snr)
    noise = rng.standard_normal((2, *signal.shape), dtype=np.float32) * sigma
    magnitude = np.sqrt((signal + noise[0]) ** 2 + noise[1] ** 2)
    return np.clip(np.rint(magnitude), 0, 32767).astype(np.int16)


def make_subject(split: str = "training", index: int = 0, seed: int = 0, cine: bool = False) -> SyntheticSubject:
    """Generate subject ``index`` (0-based) of ``split`` under ``seed``; independent of every other subject.

    The ED frame is the anatomy itself, the ES frame the anatomy pulled back by the exact motion map. With ``cine``
    all ``NbFrame`` frames are rendered (the ED and ES frames are the same arrays as without it)."""
    split_id = _split_id(split)
    index, seed = _check_int("index", index), _check_int("seed", seed)
    p = sample_subject(group_of(split, index, seed), _rng(seed, split_id, 1, index))
    renderer = _Renderer(p)
    bias = _bias_field(p)

    def image(relative: np.ndarray, frame: int) -> np.ndarray:
        return _acquire(relative, bias, p, _rng(seed, split_id, 2, index, frame))

    relative, ed_label, _ = renderer.frame(0.0)
    ed_image = image(relative, 1)
    relative, es_label, displacement = renderer.frame(1.0)
    es_image = image(relative, p.es_frame)
    subject = SyntheticSubject(split, index, p, ed_image, es_image, ed_label, es_label, displacement)
    if cine:
        known = {1: (ed_image, ed_label, None), p.es_frame: (es_image, es_label, displacement)}
        subject.cine, subject.cine_labels, subject.cine_displacement = render_cycle(
            renderer.frame, image, p.nb_frame, p.es_frame, known)
    return subject


# ---------------------------------------------------------------------------------------------------------------
# writing


def _write_nifti(path: Path, data: np.ndarray, affine: np.ndarray, dt: float | None = None,
                 slope: float | None = None) -> None:
    """Gzipped NIfTI-1 written reproducibly (gzip mtime 0, no file name); ``slope``: ``scl_slope`` of coded reals."""
    image = nib.Nifti1Image(data, affine)
    if slope is not None:
        image.header.set_slope_inter(slope, 0.0)
    image.header.set_xyzt_units("mm", "msec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    if dt is not None:
        zooms = image.header.get_zooms()
        image.header.set_zooms((*zooms[:3], dt, *zooms[4:]))
    path.write_bytes(gzip.compress(image.to_bytes(), compresslevel=_GZIP_LEVEL, mtime=0))


def save_subject(subject: SyntheticSubject, split_dir: str | Path, number: int) -> Path:
    """Write ``subject`` as ``<split_dir>/patientNNN/`` in the ACDC layout (a cine with its truth); returns it."""
    number = _check_int("number", number, minimum=1)
    stem = f"patient{number:03d}"
    folder = Path(split_dir) / stem
    folder.mkdir(parents=True, exist_ok=True)
    info = subject.info
    lines = [f"{key}: {value:.1f}" if isinstance(value, float) else f"{key}: {value}" for key, value in info.items()]
    (folder / "Info.cfg").write_text("\n".join(lines) + "\n")
    affine = subject.affine
    es = subject.params.es_frame
    _write_nifti(folder / f"{stem}_frame01.nii.gz", subject.ed_image, affine)
    _write_nifti(folder / f"{stem}_frame01_gt.nii.gz", subject.ed_label, affine)
    _write_nifti(folder / f"{stem}_frame{es:02d}.nii.gz", subject.es_image, affine)
    _write_nifti(folder / f"{stem}_frame{es:02d}_gt.nii.gz", subject.es_label, affine)
    _write_nifti(folder / f"{stem}_gt_displacement.nii.gz", subject.displacement, affine)
    if subject.cine is not None:
        dt = round(60000.0 / subject.params.heart_rate / subject.params.nb_frame, 3)
        labels, field = (folder / f"{stem}{suffix}" for suffix in TRUTH_SUFFIXES)
        _write_nifti(folder / f"{stem}_4d.nii.gz", subject.cine, affine, dt=dt)
        _write_nifti(labels, subject.cine_labels, affine, dt=dt)
        _write_nifti(field, displacement_steps(subject.cine_displacement), affine, dt=dt, slope=DISPLACEMENT_STEP)
    return folder


def _make_and_save(job: tuple[str, int, int, int, bool, str]) -> tuple[str, int, str, float]:
    """Worker: generate and write one subject; returns (split, number, group, seconds)."""
    split, index, number, seed, cine, out = job
    start = time.perf_counter()
    subject = make_subject(split, index, seed, cine)
    save_subject(subject, Path(out) / split, number)
    return split, number, subject.group, time.perf_counter() - start


def make_cohort(
    out: str | Path,
    n_train: int = 234,
    n_test: int = 100,
    seed: int = 0,
    cine: bool = False,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    splits: Sequence[str] = SPLITS,
) -> Path:
    """Write ``n_train`` training subjects (patient001..) and ``n_test`` testing subjects (numbered on after the
    training ones) to ``out`` in the ACDC layout; returns ``out``. ``workers`` processes (default: all CPUs) share
    the work; ``progress(done, total)`` is called after each subject. Same arguments give byte-identical files;
    ``splits`` writes only some splits, each exactly as in the whole cohort."""
    n_train, n_test = _check_int("n_train", n_train), _check_int("n_test", n_test)
    seed = _check_int("seed", seed)
    workers = (os.cpu_count() or 1) if workers is None else _check_int("workers", workers, minimum=1)
    out = check_writable(out)
    splits = check_splits(splits)
    jobs = [("training", k, k + 1, seed, cine, str(out)) for k in range(n_train) if "training" in splits]
    jobs += [("testing", k, n_train + k + 1, seed, cine, str(out)) for k in range(n_test) if "testing" in splits]
    for split in splits:
        (out / split).mkdir(parents=True, exist_ok=True)
    for done, _ in enumerate(run_jobs(_make_and_save, jobs, workers), start=1):
        if progress is not None:
            progress(done, len(jobs))
    return out
