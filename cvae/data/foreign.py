"""A second, independent phantom generator: the held-out "foreign" cohort of ``cvae synth --style foreign``.

Every number of the project was first measured on images of its own generator (:mod:`cvae.data.synthetic`); a
model can fit that generator's habits rather than cardiac motion. This generator builds ED/ES pairs another way, with
its own anatomy, contrast, noise and motion models (it imports nothing of the other one), and its cohorts are never
used for training or tuning (``docs/DESIGN.md``, section 9): they measure generalisation. It shares only the file
layout (ACDC's, :mod:`cvae.data.acdc`) and the clinical measures (:mod:`cvae.evaluation.clinical`) with the project.

Teaching notes
--------------
**Anatomy** (:mod:`cvae.data.foreign_anatomy`). No ellipsoids: every surface is a polar contour ``r(theta, c)``
about the LV long axis ``c``. The LV cavity is a bullet, ``R0 (1 - (c/L)^n)^m``, whose short-axis sections carry
Fourier harmonics 2-4 that drift from base to apex. The myocardium is the cavity grown by a wall thickness measured
along the contour's normal (a first-order signed distance) from a 3 levels x 6 sectors table, so one segment can be
hypertrophied (HCM) or thinned (scar) on its own. The RV cavity is a layer laid on the LV epicardium whose width
follows a skewed raised cosine in angle: a crescent whose horns are the insertion points. Papillary muscles hang
into the cavity (label 3). Around the heart: epicardial fat, a super-elliptic torso with subcutaneous fat and
muscle, lungs, a mediastinal band from the spine to the sternum, the descending aorta and a liver under a dome
(:mod:`cvae.data.foreign_scan` draws the body and the grid). The short-axis stack is tilted against the LV axis by
up to 8 degrees and turned (and mirrored half of the time) in plane; the torso's centre lies within 10 % of the
field of view's. Labels are cut at the base by a plane between two slices (the RV's one slice higher in about 30 %
of subjects); the first and last slices hold no label.

**Contrast, noise** (:mod:`cvae.data.foreign_image`). Random per-tissue signals (a bSSFP-like look with ranges of
its own), inflow modulation of the blood, thick-slice partial volume through a Gaussian slice profile, in-plane
Gaussian PSF, a coil-array bias field, non-central chi noise of 2-8 channels, random gain, int16.

**Motion** (:mod:`cvae.data.foreign_motion`). Built directly as the ES -> ED pull-back ``phi``, so that ``ES = ED o
phi`` holds by construction, from three invertible maps: a twist per level, a longitudinal shortening that lowers
the base toward a still apex, and a radial map ``r_ED^2 = r^2 + K`` that preserves the wall's cross-section (wall
thickening) and moves the RV free wall toward the septum; akinetic segments have ``K = 0``. Outside a cylinder
around the heart ``phi`` is the identity. The written displacement is ``u = phi - id`` at the voxel centres, in
voxels; the ES image samples the continuous ED scene at ``x + u(x)``, ``u`` interpolated linearly along the slice
axis between the centres (so the transform is the written field's interpolant). ED labels are the anatomy at the
voxel centres; the ES labels are the ED label map carried by ``u`` by nearest neighbour, ``label_ES(x) =
label_ED(round(x + u(x)))`` (indices clamped to the volume): the ES anatomy up to half a voxel (half a slice
through plane), sampled exactly as a registration's warped labels are.

**Groups** (:mod:`cvae.data.foreign_params`). Groups come in blocks of five (one of each, in a random order). Each
subject draws targets inside ACDC's definitions (volumes indexed by Mosteller's BSA), solves the cavity radius, RV
width (and HCM wall) for the ED volumes and the radial gains for the ejection fractions, measures its label maps
with ``clinical_measures`` and is redrawn in the rare case it misses its definition with a margin: NOR LVEF > 52 %,
MaxWT < 11.5 mm; DCM LVEDVi > 104 mL/m^2, LVEF < 38 %; HCM LVMi > 114 g/m^2, MaxWT > 15.5 mm, LVEF > 58 %; MINF LVEF
< 38 % with an akinetic territory of 120-180 degrees; RV RVEDVi > 113 mL/m^2 (above both sexes' thresholds), RVEF <
45 %, LVEF > 50 %.

Native grids: 200-260 pixels of 1.3-1.9 mm per in-plane axis, 6-18 slices of 5-10 mm from one or two slices above
the base to one beyond the apex; an oblique voxel-to-world affine shared by all files of a subject.

Public functions
----------------
* :func:`make_foreign_cohort` ``(out, n_train=0, n_test=100, seed=0, workers=None, progress=None) -> Path``: writes
  ``out/{training,testing}/patientNNN/`` (test numbers continue after the training ones): ``Info.cfg``,
  ``patientNNN_frameYY.nii.gz`` (int16 ``(X, Y, Z)``), ``patientNNN_frameYY_gt.nii.gz`` (uint8 ``(X, Y, Z)``, labels
  0-3) for ED (frame 01) and ES, and ``patientNNN_gt_displacement.nii.gz`` (float32 ``(X, Y, Z, 3)``, voxels);
  with ``cine=True`` also the whole cycle, ``patientNNN_4d.nii.gz`` (int16 ``(X, Y, Z, T)``, the frame interval in
  seconds as the fourth voxel size) with its exact labels and ED -> frame maps (:mod:`cvae.data.foreign_cycle`).
  A subject depends only on ``(seed, split, index)``; any number of workers writes the same bytes.
* :func:`make_foreign_subject` ``(split, index, seed) -> ForeignSubject`` (arrays as above, spacing mm, height cm,
  weight kg); :func:`save_foreign_subject` ``(subject, split_dir, number) -> Path`` writes one patient folder;
  :func:`foreign_group` ``(split, index, seed) -> str`` is its group.
"""
from __future__ import annotations

import gzip
import io
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from cvae.data.foreign_anatomy import Atlas, body_tissue, heart_tissue, tabulate
from cvae.data.cycle_truth import DISPLACEMENT_STEP, TRUTH_SUFFIXES, displacement_steps
from cvae.data.foreign_cycle import draw_timing, foreign_phase, scaled_motion
from cvae.data.foreign_image import SLAB_OFFSETS, acquire, bias_field, draw_contrast, render
from cvae.data.foreign_motion import Motion, carry_labels, es_points, support
from cvae.data.foreign_params import Design, draw_design
from cvae.data.acdc import check_splits
from cvae.data.jobs import run_jobs
from cvae.data.labels import GROUPS
from cvae.io.atomic import atomic_folder, check_writable

__all__ = ["SPLITS", "ForeignSubject", "foreign_group", "make_foreign_subject", "save_foreign_subject",
           "make_foreign_cohort"]

SPLITS: tuple[str, ...] = ("training", "testing")


@dataclass
class ForeignSubject:
    """One subject: ED and ES frames on one native grid.

    ``ed_image``/``es_image`` int16 ``(X, Y, Z)``; ``ed_label``/``es_label`` uint8 ``(X, Y, Z)`` in {0, 1, 2, 3};
    ``displacement`` float32 ``(X, Y, Z, 3)`` in voxels, ``ES(x) = ED(x + u(x))``; ``affine`` (4, 4) voxel -> world
    mm; ``spacing`` (3,) mm; ``height`` cm, ``weight`` kg; frames 1-based. The labels meet ACDC's definition of
    ``group`` as :func:`cvae.evaluation.clinical.clinical_measures` measures them. With ``cine``: every frame,
    ``cine`` int16 ``(X, Y, Z, T)``, ``cine_labels`` uint8 ``(X, Y, Z, T)``, ``cine_displacement`` float32
    ``(X, Y, Z, T, 3)`` (ED -> frame, voxels) and the frame interval ``frame_seconds``.
    """

    group: str
    height: float
    weight: float
    nb_frame: int
    ed_frame: int
    es_frame: int
    ed_image: np.ndarray
    es_image: np.ndarray
    ed_label: np.ndarray
    es_label: np.ndarray
    displacement: np.ndarray
    affine: np.ndarray
    spacing: np.ndarray
    cine: np.ndarray | None = None
    cine_labels: np.ndarray | None = None
    cine_displacement: np.ndarray | None = None
    frame_seconds: float | None = None


def _check_int(name: str, value: object, minimum: int) -> int:
    """``value`` as an int >= ``minimum``, else a one-line ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _split_id(split: str) -> int:
    """0 for ``"training"``, 1 for ``"testing"``, else a one-line ``ValueError``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return SPLITS.index(split)


def foreign_group(split: str, index: int, seed: int = 0) -> str:
    """Group of subject ``index`` (0-based) of ``split``: blocks of five hold each group once, in a random order."""
    block = np.random.default_rng([_check_int("seed", seed, 0), _split_id(split), 1, index // 5]).permutation(5)
    return GROUPS[int(block[index % 5])]


def _window(centre: float, half: int, size: int) -> slice:
    """Pixels ``centre +- half`` clipped to ``[0, size)``."""
    return slice(max(0, int(math.floor(centre)) - half), min(size, int(math.floor(centre)) + half + 2))


def _samples(design: Design, xs: slice, ys: slice) -> np.ndarray:
    """Voxel coordinates (3, X', Y', Z, 3) of the slab samples of the voxels in the window ``xs`` x ``ys``."""
    i, j = np.arange(xs.start, xs.stop, dtype=np.float32), np.arange(ys.start, ys.stop, dtype=np.float32)
    k = np.arange(design.shape[2], dtype=np.float32)[:, None] + SLAB_OFFSETS[None, :]
    return np.stack(np.broadcast_arrays(i[:, None, None, None], j[None, :, None, None], k[None, None]))


def _ed_tissue(design: Design, atlas: Atlas) -> np.ndarray:
    """Tissue ids (X, Y, Z, 3) of the ED scene at every voxel's slab samples: the body prism once per pixel, the
    heart in a window around it."""
    nx, ny, nz = design.shape
    frame = design.frame
    plane = frame.to_scene(np.stack(np.broadcast_arrays(np.arange(nx, dtype=np.float32)[:, None, None, None],
                                                        np.arange(ny, dtype=np.float32)[None, :, None, None],
                                                        np.float32(0))))
    depth = frame.depth(_samples(design, slice(0, 1), slice(0, 1)))
    tissue = body_tissue(design.body, plane[0], plane[1], depth)
    centre = frame.origin[:2] / frame.spacing[:2]
    half = math.ceil((atlas.bound.max() + design.heart.apex * frame.lean + 2.0) / frame.spacing[0])
    xs, ys = _window(centre[0], half, nx), _window(centre[1], half, ny)
    heart = heart_tissue(atlas, frame, _samples(design, xs, ys))
    tissue[xs, ys] = np.where(heart >= 0, heart, tissue[xs, ys])
    return tissue


def _slab_displacement(centre: np.ndarray) -> np.ndarray:
    """The displacement (3, X', Y', Z, 3) at the slab samples, interpolated linearly along the slice axis from its
    values (3, X', Y', Z) at the voxel centres (the edge slices' values beyond them): the continuous transform is
    the interpolant of the written field."""
    below = np.concatenate([centre[..., :1], centre[..., :-1]], axis=-1)
    above = np.concatenate([centre[..., 1:], centre[..., -1:]], axis=-1)
    out = np.empty(centre.shape + SLAB_OFFSETS.shape, np.float32)
    for sample, offset in enumerate(SLAB_OFFSETS):
        neighbour = above if offset > 0 else below
        out[..., sample] = centre + abs(offset) * (neighbour - centre)
    return out


def _moved_tissue(design: Design, atlas: Atlas, ed: np.ndarray, motion: Motion) -> tuple[np.ndarray, np.ndarray]:
    """Tissue ids (X, Y, Z, 3) of the scene pulled back by ``motion`` (the ED scene at ``x + u(x)`` of every slab
    sample: the ES scene for ``design.motion``) and the displacement ``u = phi - id`` (X, Y, Z, 3) float32 at the
    voxel centres, in voxels; both change only inside the motion's support."""
    frame, (nx, ny, nz) = design.frame, design.shape
    centre = frame.origin[:2] / frame.spacing[:2]
    half = math.ceil((support(design.heart, motion)[0] + design.heart.apex * frame.lean + 2.0) / frame.spacing[0])
    xs, ys = _window(centre[0], half, nx), _window(centre[1], half, ny)
    voxels = np.stack(np.meshgrid(np.arange(xs.start, xs.stop), np.arange(ys.start, ys.stop), np.arange(nz),
                                  indexing="ij")).astype(np.float32)
    shift_at_centres = es_points(atlas, motion, frame, voxels) - voxels              # exactly 0 where phi = id
    shift = _slab_displacement(shift_at_centres)
    moving = np.nonzero(np.any(shift != 0, axis=0))                                    # (i, j, k, sample)
    source = shift[(slice(None), *moving)]
    source[0] += moving[0] + xs.start
    source[1] += moving[1] + ys.start
    source[2] += moving[2] + SLAB_OFFSETS[moving[3]]
    moved = heart_tissue(atlas, frame, source)
    outside = moved < 0
    moved[outside] = body_tissue(design.body, *frame.to_scene(source[:, outside]))
    tissue = ed.copy()
    tissue[xs, ys][moving] = moved
    displacement = np.zeros((nx, ny, nz, 3), np.float32)
    displacement[xs, ys] = np.moveaxis(shift_at_centres, 0, -1)
    return tissue, displacement


def _place(labels: np.ndarray, design: Design) -> np.ndarray:
    """The window's ED label map (W, W, Z) placed on the full grid (X, Y, Z)."""
    full = np.zeros(design.shape, np.uint8)
    x, y = design.corner
    full[x:x + labels.shape[0], y:y + labels.shape[1]] = labels
    return full


def make_foreign_subject(split: str = "testing", index: int = 0, seed: int = 0, cine: bool = False) -> ForeignSubject:
    """Subject ``index`` (0-based) of ``split`` (``"training"`` or ``"testing"``) for ``seed`` (>= 0): a function of
    these three only. About a second of one core; with ``cine`` also every frame of the cycle (about half a second
    per frame), from a random stream of its own, so the ED and ES frames do not depend on it."""
    key = [_check_int("seed", seed, 0), _split_id(split), 0, _check_int("index", index, 0)]
    rng = np.random.default_rng(key)
    design = draw_design(rng, foreign_group(split, index, seed))
    contrast = draw_contrast(rng, design.body, design.heart.apex)
    atlas = tabulate(design.heart)
    ed_tissue = _ed_tissue(design, atlas)
    es_tissue, displacement = _moved_tissue(design, atlas, ed_tissue, design.motion)
    frame = design.frame
    grid_mm = tuple(np.arange(n, dtype=float).reshape([-1 if k == axis else 1 for k in range(3)]) * step
                    for axis, (n, step) in enumerate(zip(design.shape, frame.spacing)))
    bias = bias_field(contrast, frame, design.shape)
    images = [acquire(render(tissue, grid_mm, contrast, index_), bias, contrast, rng)
              for index_, tissue in enumerate((ed_tissue, es_tissue))]
    ed_label = _place(design.ed_labels, design)

    def labels_of(field: np.ndarray) -> np.ndarray:
        return carry_labels(ed_label, np.indices(design.shape) + np.moveaxis(field, -1, 0).astype(np.float64))

    subject = ForeignSubject(group=design.group, height=design.height, weight=design.weight,
                             nb_frame=design.nb_frame, ed_frame=1, es_frame=design.es_frame, ed_image=images[0],
                             es_image=images[1], ed_label=ed_label, es_label=labels_of(displacement),
                             displacement=displacement, affine=design.affine, spacing=frame.spacing.astype(np.float64))
    if cine:
        cine_rng = np.random.default_rng([*key[:2], 1, key[3]])
        timing = draw_timing(cine_rng)

        def frame(t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            """(image, labels, ED -> frame displacement) of 1-based frame ``t``; ED and ES are the frame files'."""
            if t == 1:
                return subject.ed_image, ed_label, np.zeros_like(displacement)
            if t == design.es_frame:
                return subject.es_image, subject.es_label, displacement
            alpha = foreign_phase(t, design.nb_frame, design.es_frame, timing)
            tissue, field = _moved_tissue(design, atlas, ed_tissue, scaled_motion(design.motion, alpha))
            return acquire(render(tissue, grid_mm, contrast, alpha), bias, contrast, cine_rng), labels_of(field), field

        images, labels, fields = zip(*(frame(t) for t in range(1, design.nb_frame + 1)))
        subject.cine, subject.cine_labels = np.stack(images, axis=-1), np.stack(labels, axis=-1)
        subject.cine_displacement = np.stack(fields, axis=3)
        subject.frame_seconds = round(60.0 / timing.heart_rate / design.nb_frame, 4)
    return subject


def _nifti_gz(data: np.ndarray, affine: np.ndarray, seconds: float | None = None, slope: float | None = None) -> bytes:
    """A ``.nii.gz`` file's bytes, reproducible: no time stamp or file name in the gzip header. ``seconds``: the
    frame interval of a 4-D file (its fourth voxel size); ``slope``: ``scl_slope`` of coded reals."""
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm", "sec")
    if seconds is not None:
        zooms = image.header.get_zooms()
        image.header.set_zooms((*zooms[:3], seconds, *zooms[4:]))
    if slope is not None:
        image.header.set_slope_inter(slope, 0.0)
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=1) as stream:
        stream.write(image.to_bytes())
    return buffer.getvalue()


def save_foreign_subject(subject: ForeignSubject, split_dir: str | Path, number: int) -> Path:
    """Write ``split_dir/patientNNN`` (``Info.cfg``, ED/ES images and labels, ground-truth displacement; with a cine
    also ``patientNNN_4d.nii.gz`` and its exact truth, :mod:`cvae.data.cycle_truth`) atomically; returns the folder."""
    name = f"patient{number:03d}"
    info = (f"ED: {subject.ed_frame}\nES: {subject.es_frame}\nGroup: {subject.group}\nHeight: {subject.height:.1f}\n"
            f"NbFrame: {subject.nb_frame}\nWeight: {subject.weight:.1f}\n")
    files = {"Info.cfg": info.encode()}
    for frame, image, label in ((subject.ed_frame, subject.ed_image, subject.ed_label),
                                (subject.es_frame, subject.es_image, subject.es_label)):
        files[f"{name}_frame{frame:02d}.nii.gz"] = _nifti_gz(image, subject.affine)
        files[f"{name}_frame{frame:02d}_gt.nii.gz"] = _nifti_gz(label, subject.affine)
    files[f"{name}_gt_displacement.nii.gz"] = _nifti_gz(subject.displacement, subject.affine)
    if subject.cine is not None:
        labels, field = (f"{name}{suffix}" for suffix in TRUTH_SUFFIXES)
        files[f"{name}_4d.nii.gz"] = _nifti_gz(subject.cine, subject.affine, subject.frame_seconds)
        files[labels] = _nifti_gz(subject.cine_labels, subject.affine, subject.frame_seconds)
        files[field] = _nifti_gz(displacement_steps(subject.cine_displacement), subject.affine, subject.frame_seconds,
                                 DISPLACEMENT_STEP)

    def write(folder: Path) -> None:
        for file_name, content in files.items():
            (folder / file_name).write_bytes(content)

    return atomic_folder(Path(split_dir) / name, write)


def _make_and_save(job: tuple[str, int, int, int, bool, str]) -> None:
    """Worker: make subject ``index`` of ``split`` (with its cine or not) and save it as ``patient<number>`` in
    ``split_dir``."""
    split, index, number, seed, cine, split_dir = job
    save_foreign_subject(make_foreign_subject(split, index, seed, cine), split_dir, number)


def make_foreign_cohort(out: str | Path, n_train: int = 0, n_test: int = 100, seed: int = 0,
                        workers: int | None = None, progress: Callable[[int, int], None] | None = None,
                        splits: Sequence[str] = SPLITS, cine: bool = False) -> Path:
    """Write a foreign cohort in the ACDC layout: ``out/training/patient001..`` then ``out/testing/`` numbered on
    (``splits``: only some of them, each exactly as in the whole cohort; ``cine``: with every subject's cine and its
    exact truth, the other files unchanged).

    ``workers`` processes (default all CPUs; the files do not depend on it); ``progress(done, total)`` is called
    after each subject. Returns ``out``. Bad arguments raise a one-line ``ValueError`` before any work.
    """
    n_train, n_test = _check_int("n_train", n_train, 0), _check_int("n_test", n_test, 0)
    seed = _check_int("seed", seed, 0)
    workers = (os.cpu_count() or 1) if workers is None else _check_int("workers", workers, 1)
    out = check_writable(out)
    splits = check_splits(splits)
    jobs = [(split, index, first + index + 1, seed, cine, str(out / split))
            for split, count, first in (("training", n_train, 0), ("testing", n_test, n_train))
            for index in range(count) if split in splits]
    for split in splits:
        (out / split).mkdir(parents=True, exist_ok=True)
    for done, _ in enumerate(run_jobs(_make_and_save, jobs, workers), start=1):
        if progress is not None:
            progress(done, len(jobs))
    return out
