"""Fixtures and helpers shared by the test modules (test modules import from here, never from each other).

Sections: the machine; the tiny grids; the benchmark scripts; the session's synthetic cohort; an isolated cache;
hand-made ACDC folders; numpy references (nearest-neighbour label warp, Dice, folding); the small model, cohort and
checkpoint of the latent-space tests; synthetic codes and images; the app's environment.
"""
from __future__ import annotations

import importlib.util
import os
import struct
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy.ndimage import convolve1d

from cvae.checkpoint import checkpoint_dirs, load_checkpoint, save_checkpoint
from cvae.data.dataset import PairDataset
from cvae.data.preprocess import PreprocessedPair
from cvae.evaluation.metrics import mean_dice
from cvae.fields import image_tensor, warp_labels
from cvae.losses import LCC_EPS
from cvae.model import CVAERegistration, ModelConfig

# ---------------------------------------------------------------------------------------------------------------
# the machine: the tests run on 2 CPU cores, shared by the pytest-xdist workers when `-n` is given

WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1) // WORKERS))


@pytest.fixture(autouse=True)
def _keep_main_module() -> Iterator[None]:
    """Put back ``sys.modules["__main__"]`` after each test: Streamlit's AppTest leaves its temporary script there, and
    a process pool started later with "spawn" (cohort preprocessing) would run that script in its children."""
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main

# ---------------------------------------------------------------------------------------------------------------
# the tiny grid of the fast tests

#: Preprocessing and model sizes for fast tests: a 32 x 32 x 16 grid at 6 x 6 x 6.3 mm still holds the heart.
TINY_SIZE = (32, 32, 16)
TINY_SPACING = (6.0, 6.0, 6.3)
TINY_MODEL = dict(image_size=TINY_SIZE, encoder_channels=(8, 8, 8, 4), decoder_channels=(8, 8, 4), head_channels=4,
                  kernel_smooth=9, sigma_smooth=1.5)

# ---------------------------------------------------------------------------------------------------------------
# the benchmark scripts (not a package: they import each other with ``benchmarks/`` on ``sys.path``)

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` imported as a module, with ``benchmarks/`` on ``sys.path`` as when it runs."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------------------------
# the session's synthetic cohort (cvae.data.synthetic) and its preprocessed-volume cache


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> Path:
    """8 training + 5 testing subjects (every group present) in the ACDC layout, made once per session."""
    from cvae.data.synthetic import make_cohort

    root = tmp_path_factory.mktemp("tiny-cohort")
    make_cohort(root, n_train=8, n_test=5, seed=0)
    return root


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """Preprocessed-volume cache shared by the tests of one session."""
    return tmp_path_factory.mktemp("cvae-cache")


# ---------------------------------------------------------------------------------------------------------------
# a cache of one test's own (request it, or `pytestmark = pytest.mark.usefixtures("isolated_cache")`)


@pytest.fixture
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``$CVAE_CACHE`` set to ``tmp_path / "cache"`` for one test: preprocessed pairs and latent tables of that test
    only (nothing read from or left in the user's cache)."""
    monkeypatch.setenv("CVAE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ---------------------------------------------------------------------------------------------------------------
# hand-made ACDC folders: tiny concentric-label phantoms on a rotated, anisotropic grid

ACDC_SHAPE = (24, 28, 6)
ACDC_SPACING = (1.5625, 1.5625, 10.0)


def acdc_affine(spacing=ACDC_SPACING) -> np.ndarray:
    """A non-trivial voxel-to-world affine: axis 0 flipped, a small in-plane rotation, an offset."""
    angle = np.deg2rad(20.0)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-1.0, 1.0, 1.0]) @ np.diag(spacing)
    affine[:3, 3] = [40.0, -25.0, 12.0]
    return affine


def heart_label(shape=ACDC_SHAPE, centre=(13.0, 12.0, 3.0), radius=5.0) -> np.ndarray:
    """Concentric LV (3) / myocardium (2) with an RV (1) blob beside it, uint8 ``shape``."""
    x, y, z = np.indices(shape)
    r = np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2)
    inside = np.abs(z - centre[2]) <= 2
    label = np.zeros(shape, np.uint8)
    label[(r < radius + 2) & inside] = 2
    label[(r < radius) & inside] = 3
    label[(np.sqrt((x - centre[0]) ** 2 + (y - centre[1] - radius - 5) ** 2) < 3) & inside] = 1
    return label


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> None:
    nib.save(nib.Nifti1Image(data, acdc_affine() if affine is None else affine), str(path))


def write_patient(
    split_dir: Path, number: int, group: str = "NOR", ed: int = 1, es: int = 9, labels: bool = True,
    seed: int = 0, shape=ACDC_SHAPE,
) -> Path:
    """Write ``split_dir/patientNNN`` with Info.cfg, ED/ES frames and (optionally) their ``_gt`` labels.

    ED cavity radius 5 voxels, ES 3.5 (LVEF ~ 51 %); height 180 cm, weight 80 kg.
    """
    subject = f"patient{number:03d}"
    directory = split_dir / subject
    directory.mkdir(parents=True)
    (directory / "Info.cfg").write_text(
        f"ED: {ed}\nES: {es}\nGroup: {group}\nHeight: 180.0\nNbFrame: 30\nWeight: 80.0\n"
    )
    rng = np.random.default_rng(seed)
    for frame, radius in ((ed, 5.0), (es, 3.5)):
        label = heart_label(shape, radius=radius)
        image = (100.0 * (label == 3) + 40.0 * (label > 0) + rng.normal(20.0, 5.0, shape)).astype(np.float32)
        save_nifti(directory / f"{subject}_frame{frame:02d}.nii.gz", image)
        if labels:
            save_nifti(directory / f"{subject}_frame{frame:02d}_gt.nii.gz", label)
    return directory


def as_cine_only(directory: Path, frames: int = 12) -> np.ndarray:
    """Turn a patient folder of :func:`write_patient` into what a user with only cine files has: the two frames
    become frames ED and ES of ``patientNNN_4d.nii.gz`` (``frames`` in all, the others blends of the two), the frame
    files go, and ``Info.cfg`` keeps ED, ES and NbFrame but no ``Group``. Returns the cine ``(X, Y, Z, T)``."""
    subject = directory.name
    info = {k.strip(): v.strip() for k, v in (line.split(":") for line in (directory / "Info.cfg").read_text()
                                              .splitlines() if line.strip())}
    ed, es = int(info["ED"]), int(info["ES"])
    ed_path, es_path = (directory / f"{subject}_frame{f:02d}.nii.gz" for f in (ed, es))
    ed_image, es_image = (np.asarray(nib.load(str(p)).dataobj, dtype=np.float32) for p in (ed_path, es_path))
    weights = np.clip(np.abs(np.arange(1, frames + 1) - ed) / max(1, abs(es - ed)), 0, 1)
    cine = np.stack([(1 - w) * ed_image + w * es_image for w in weights], axis=-1).astype(np.float32)
    cine[..., ed - 1], cine[..., es - 1] = ed_image, es_image
    save_nifti(directory / f"{subject}_4d.nii.gz", cine)
    for path in directory.glob(f"{subject}_frame*.nii.gz"):
        path.unlink()
    (directory / "Info.cfg").write_text(f"ED: {ed}\nES: {es}\nNbFrame: {frames}\n")
    return cine


def malformed_nifti(kind: str) -> bytes:
    """The bytes of a small float32 ``.nii`` with a broken header: ``"datatype"`` has the unknown datatype code 999
    (the int16 at byte 70); ``"huge"`` announces 30000 x 30000 x 1000 voxels (dim, at byte 40) over the 8 bytes of
    data left after the 352-byte header."""
    raw = bytearray(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)).to_bytes())
    if kind == "datatype":
        struct.pack_into("<h", raw, 70, 999)
        return bytes(raw)
    if kind == "huge":
        struct.pack_into("<8h", raw, 40, 3, 30000, 30000, 1000, 1, 1, 1, 1)
        return bytes(raw[:360])
    raise ValueError(f"unknown kind {kind!r}")


def truncate_es_frame(directory: Path) -> Path:
    """Cut the ES image (frame 9) of ``patient005`` in ``directory`` to half its bytes: a corrupt file."""
    path = directory / "patient005_frame09.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# ---------------------------------------------------------------------------------------------------------------
# independent references (numpy) for what the library computes with torch


def nearest_warp(label: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    """``label (X, Y, Z)`` sampled at ``x + u(x)`` by nearest neighbour, with the project's conventions: ``u (3, X, Y,
    Z)`` in voxels, channel ``i`` along array axis ``i``; points outside the volume take the border value (indices
    clamped, as ``grid_sample``'s border padding). Rounding half to even, as ``grid_sample``'s nearest mode."""
    index = np.indices(label.shape, dtype=np.float64) + np.asarray(displacement, dtype=np.float64)
    nearest = tuple(np.clip(np.rint(index[i]), 0, n - 1).astype(np.int64) for i, n in enumerate(label.shape))
    return np.asarray(label)[nearest]


def dice_by_hand(a: np.ndarray, b: np.ndarray) -> float:
    """``2 |A & B| / (|A| + |B|)`` of two boolean masks; NaN when both are empty."""
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else float("nan")


def numpy_lcc(a: np.ndarray, b: np.ndarray, sigma: float, kernel_size: int, eps: float = LCC_EPS) -> float:
    """Mean of ``cov^2 / (var_a var_b + eps)`` with local statistics under a truncated Gaussian window of
    ``kernel_size`` taps, renormalised to the voxels inside the volume (normalised convolution), by scipy."""
    x = np.arange(kernel_size) - (kernel_size - 1) / 2
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()

    def local_mean(v: np.ndarray) -> np.ndarray:
        num, den = v, np.ones_like(v)
        for axis in range(3):
            num = convolve1d(num, kernel, axis=axis, mode="constant")
            den = convolve1d(den, kernel, axis=axis, mode="constant")
        return num / den

    mean_a, mean_b = local_mean(a), local_mean(b)
    cov = local_mean(a * b) - mean_a * mean_b
    var_a, var_b = local_mean(a * a) - mean_a ** 2, local_mean(b * b) - mean_b ** 2
    return float((cov ** 2 / (var_a * var_b + eps)).mean())


def folding_by_hand(displacement: np.ndarray) -> float:
    """Fraction of voxels where ``det(I + du/dx) <= 0`` for ``u (3, X, Y, Z)`` in voxels, by ``np.gradient`` (central
    differences inside, one-sided at the borders, as :func:`cvae.fields.jacobian_determinant` documents)."""
    u = np.asarray(displacement, dtype=np.float64)
    grads = np.gradient(u, axis=(1, 2, 3))  # grads[j][i] = d u_i / d x_j
    jacobian = np.stack([np.stack([grads[j][i] for j in range(3)], axis=-1) for i in range(3)], axis=-2)
    det = np.linalg.det(np.eye(3) + jacobian)
    return float((det <= 0).mean())


# ---------------------------------------------------------------------------------------------------------------
# the latent-space tests: a small model whose code visibly changes the deformation, its checkpoint, a cohort

LATENT_SIZE = (24, 24, 8)
LATENT_SPACING = (2.0, 2.0, 6.0)
LATENT_DIM = 3


def latent_model(seed: int = 0, latent_dim: int = LATENT_DIM) -> CVAERegistration:
    """A small random model whose decoder makes deformations of about a voxel that depend clearly on ``z``.

    (At initialisation the decoder's up-sampling path damps the code's signal ~1000-fold relative to the image
    channels concatenated at each scale; a large fully connected layer restores the code's influence.)
    """
    torch.manual_seed(seed)
    model = CVAERegistration(ModelConfig(image_size=LATENT_SIZE, latent_dim=latent_dim, encoder_channels=(4, 4, 4, 2),
                                         decoder_channels=(4, 4, 4), head_channels=4, kernel_smooth=7))
    with torch.no_grad():
        model.decoder.fc.weight.normal_(std=100.0)
        model.decoder.velocity.weight.normal_(std=1.5)
    return model.eval()


@pytest.fixture
def latent_cohort(tmp_path: Path) -> Path:
    """Four training subjects (patient004 without labels) and one test subject, in ``tmp_path / "acdc"``."""
    root = tmp_path / "acdc"
    for number, group in ((1, "DCM"), (2, "HCM"), (3, "NOR")):
        write_patient(root / "training", number, group=group, seed=number)
    write_patient(root / "training", 4, group="RV", labels=False, seed=4)
    write_patient(root / "testing", 101, group="MINF", seed=5)
    return root


@pytest.fixture
def latent_checkpoint(tmp_path: Path) -> Path:
    """:func:`latent_model` saved in ``tmp_path / "ckpt"`` (voxels of ``LATENT_SPACING``)."""
    return save_checkpoint(tmp_path / "ckpt", latent_model(), spacing=LATENT_SPACING)


@pytest.fixture
def latent_pair(latent_cohort: Path) -> PreprocessedPair:
    """The preprocessed (ES, ED) pair of ``patient001`` of :func:`latent_cohort` on the latent model's grid."""
    return PairDataset(latent_cohort, "training", size=LATENT_SIZE, spacing=LATENT_SPACING).pair(0)


# ---------------------------------------------------------------------------------------------------------------
# synthetic codes and images


def cohort_posteriors(n: int = 40, d: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Posteriors of a cohort, as a trained encoder gives: ``mu, sigma (n, d)``, codes off the origin with
    correlated, unequal spreads."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) * np.linspace(1.0, 0.3, d)
    mu = rng.normal(size=(n, d)) @ mixing.T + np.linspace(-1.5, 1.0, d)
    return mu, rng.uniform(0.02, 0.3, size=(n, d))


def ellipsoid_pair(shape, shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(fixed, moving)`` ``(1, 1, *shape)``: a bright ellipsoid (moving) and the same ellipsoid translated by
    ``shift`` voxels along X (fixed)."""
    x, y, z = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij")
    c = [n / 2 for n in shape]

    def blob(dx):
        r = ((x - c[0] - dx) / 6) ** 2 + ((y - c[1]) / 5) ** 2 + ((z - c[2]) / 3) ** 2
        return torch.sigmoid(4 * (1 - r))[None, None]

    return blob(shift), blob(0.0)


# ---------------------------------------------------------------------------------------------------------------
# the app (test_app.py with AppTest, test_browser.py with a real browser)


def app_environment(folder: Path, tiny_cohort: Path) -> dict[str, str]:
    """Environment variables pointing the app at a cohort and a randomly initialised 128 x 128 x 32 checkpoint.

    The cohort is the session's ``tiny_cohort`` with all 13 subjects linked under ``testing/``: every group has at
    least 2 subjects, as the classification needs.
    """
    cohort = folder / "cohort" / "testing"
    cohort.mkdir(parents=True)
    for patient in sorted(tiny_cohort.glob("*/patient*")):
        (cohort / patient.name).symlink_to(patient, target_is_directory=True)
    torch.manual_seed(0)
    checkpoint = save_checkpoint(folder / "random-checkpoint", CVAERegistration(),
                                 training={"note": "random weights, for the app tests"})
    return {"CVAE_DATA": str(cohort.parent), "CVAE_CHECKPOINT": str(checkpoint), "CVAE_CACHE": str(folder / "cache"),
            "CVAE_RESULTS": str(folder / "results")}


# ---------------------------------------------------------------------------------------------------------------
# one-line errors


def one_line_error(error: type[Exception], call: Callable[[], object]) -> str:
    """The message of the ``error`` that ``call()`` raises, checked to be one line."""
    with pytest.raises(error) as info:
        call()
    text = str(info.value)
    assert "\n" not in text, text
    return text


# ---------------------------------------------------------------------------------------------------------------
# the shipped checkpoint on a synthetic pair

#: Whether the shipped checkpoint ``synthetic-acdc`` is there (tests of its behaviour are skipped otherwise).
SHIPPED = any((d / "synthetic-acdc" / "config.json").is_file() for d in checkpoint_dirs())


def shipped_pair() -> tuple[CVAERegistration, PreprocessedPair, torch.Tensor, torch.Tensor]:
    """The shipped ``synthetic-acdc`` model, test subject 3 of the synthetic generator with seed 321 preprocessed on
    its grid, and that pair's ``(fixed, moving)`` tensors ``(1, 1, X, Y, Z)``."""
    from cvae.data.preprocess import preprocess_image_pair
    from cvae.data.synthetic import make_subject

    model, config = load_checkpoint("synthetic-acdc", "cpu")
    subject = make_subject("testing", 3, seed=321)
    prep = preprocess_image_pair(subject.es_image.astype(np.float32), subject.ed_image.astype(np.float32),
                                 subject.affine, subject.es_label, subject.ed_label, model.config.image_size,
                                 config["spacing"])
    return model, prep, image_tensor(prep.fixed), image_tensor(prep.moving)


def warped_mean_dice(prep: PreprocessedPair, displacement: torch.Tensor) -> float:
    """Mean Dice of the five structures: ``prep``'s ED labels warped by ``displacement`` (nearest neighbour) against
    its ES labels."""
    warped = warp_labels(image_tensor(prep.moving_label), displacement)[0, 0].numpy()
    return mean_dice(warped, prep.fixed_label)


# ---------------------------------------------------------------------------------------------------------------
# the Motion page (test_app_motion.py with AppTest, test_browser.py): cines, a small model, a motion model

#: Frames of the cines of :func:`cine_patient`.
MOTION_FRAMES = 10


def cine_patient(split_dir: Path, number: int, group: str, seed: int, frames: int = MOTION_FRAMES) -> Path:
    """A patient folder of :func:`write_patient` (ED frame 1, ES frame 5) made cine-only by :func:`as_cine_only`,
    with its group and its ED and ES segmentations kept."""
    directory = write_patient(split_dir, number, group=group, es=5, seed=seed)
    labels = {path.name: path.read_bytes() for path in directory.glob("*_gt.nii.gz")}
    as_cine_only(directory, frames)
    for name, data in labels.items():
        (directory / name).write_bytes(data)
    with (directory / "Info.cfg").open("a") as info:
        info.write(f"Group: {group}\n")
    return directory


def motion_environment(folder: Path) -> dict[str, str]:
    """Environment variables pointing the app at a cohort of three cines (DCM, NOR, HCM: ``patient001-003`` of
    :func:`cine_patient`), :func:`latent_model` as the registration checkpoint and a small motion model trained on the
    cohort's tracked cycles for 20 steps."""
    from cvae.motion.cycles import cohort_cycles
    from cvae.motion.model import MotionConfig
    from cvae.motion.train import MotionTraining, train_motion

    root = folder / "cine-cohort"
    for number, group in ((1, "DCM"), (2, "NOR"), (3, "HCM")):
        cine_patient(root / "testing", number, group, seed=number)
    model = latent_model()
    checkpoint = save_checkpoint(folder / "registration", model, spacing=LATENT_SPACING)
    motion = folder / "motion"
    train_motion(cohort_cycles(model, root, "testing", LATENT_SPACING), motion,
                 MotionTraining(steps=20, batch=2, validation=1),
                 MotionConfig(latent_dim=LATENT_DIM, hidden=16, levels=2, context=4, style=2),
                 source={"registration_checkpoint": str(checkpoint)}, log=lambda _: None)
    return {"CVAE_DATA": str(root), "CVAE_CHECKPOINT": str(checkpoint), "CVAE_MOTION_CHECKPOINT": str(motion),
            "CVAE_CACHE": str(folder / "cache"), "CVAE_RESULTS": str(folder / "results")}
