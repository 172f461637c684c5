"""The teaching notebooks run top to bottom (``CVAE_NOTEBOOK_FAST=1``) in a Jupyter kernel, on temporary copies.

Each kernel gets a private cache and temporary folder and one thread. When the shipped checkpoint
``checkpoints/synthetic-acdc`` is not there yet, a randomly initialised model of the default architecture stands in
for it (through ``$CVAE_CHECKPOINTS``), so the notebooks' code paths are exercised either way; likewise notebook 4
trains a tiny motion model for a few steps on its own cycles when ``checkpoints/motion-synthetic-acdc`` is missing.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path

import nbformat
import nibabel as nib
import numpy as np
import pytest
import torch

from cvae.checkpoint import CheckpointError, resolve_checkpoint, save_checkpoint
from cvae.data.acdc import find_subjects
from cvae.data.labels import STRUCTURES
from cvae.model import CVAERegistration
from cvae.paths import data_root

from conftest import dice_by_hand

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
CELL_TIMEOUT_S = 600


def _load_executor():
    spec = importlib.util.spec_from_file_location("notebooks_execute", NOTEBOOKS / "execute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


executor = _load_executor()


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Environment inherited by the kernels; yields a scratch folder."""
    base = tmp_path_factory.mktemp("notebooks")
    (base / "tmp").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CVAE_NOTEBOOK_FAST", "1")
        mp.setenv("CVAE_CACHE", str(base / "cache"))
        mp.setenv("TMPDIR", str(base / "tmp"))
        mp.setenv("OMP_NUM_THREADS", "1")
        # Importing streamlit (the app tests) sets MPLBACKEND=Agg for the whole process; kernels need inline plots.
        mp.delenv("MPLBACKEND", raising=False)
        try:
            resolve_checkpoint("synthetic-acdc")
        except CheckpointError:
            torch.manual_seed(0)
            save_checkpoint(base / "checkpoints" / "synthetic-acdc", CVAERegistration(),
                            training={"note": "random initialisation standing in for the shipped checkpoint"})
            mp.setenv("CVAE_CHECKPOINTS", str(base / "checkpoints"))
        yield base


@pytest.fixture(scope="module")
def demo_cohort() -> Path:
    root = data_root()
    if not (root / "testing").is_dir():
        pytest.skip(f"demo cohort missing under {root}: run `make cohort` (or set CVAE_DATA)")
    return root


def _run(name: str, workdir: Path, parameters: dict | None = None) -> nbformat.NotebookNode:
    """Execute a temporary copy of ``notebooks/<name>`` in ``workdir``; the committed file must stay untouched."""
    source = NOTEBOOKS / name
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    workdir.mkdir(parents=True, exist_ok=True)
    copy = workdir / name
    copy.write_bytes(source.read_bytes())
    nb = executor.execute_notebook(copy, workdir, parameters, timeout=CELL_TIMEOUT_S)
    assert hashlib.sha256(source.read_bytes()).hexdigest() == digest
    return nb


def _outputs(nb: nbformat.NotebookNode, kind: str) -> list:
    """Every text (``kind="text"``) or PNG (``kind="png"``) output of the notebook."""
    found = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if kind == "png" and "image/png" in output.get("data", {}):
                found.append(output["data"]["image/png"])
            if kind == "text":
                found.append(output.get("text", "") + "".join(str(v) for k, v in output.get("data", {}).items()
                                                              if k.startswith("text/")))
    return found


def test_quickstart_registers_a_demo_pair_and_the_users_files(kernel_env: Path, demo_cohort: Path) -> None:
    info = find_subjects(demo_cohort, "testing")[0]
    out = kernel_env / "quickstart" / "mine"
    nb = _run("01_quickstart.ipynb", kernel_env / "quickstart",
              dict(FIXED=str(info.es_image), MOVING=str(info.ed_image), FIXED_SEG=str(info.es_label),
                   MOVING_SEG=str(info.ed_label), OUT=str(out)))
    text = "\n".join(_outputs(nb, "text"))
    assert "Dice after" in text and "HD95 after (mm)" in text
    optimised = re.search(r"(\d+) steps in [\d.]+ s; LCC [\d.]+ -> [\d.]+; mean Dice [\d.]+ -> [\d.]+; folding "
                          r"([\d.]+) %", text)
    assert optimised and 1 <= int(optimised[1]) <= 20 and float(optimised[2]) == 0.0, text
    assert len(_outputs(nb, "png")) == 2  # the demo pair and the user's pair
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["segmentation"]["structures"]) >= {"LV blood pool", "RV", "Whole heart"}
    # the mean Dice it reports is that of the written warped segmentation against the fixed one, counted here
    warped = np.asarray(nib.load(str(out / "warped_seg.nii.gz")).dataobj)
    fixed = np.asarray(nib.load(str(info.es_label)).dataobj)
    dices = [dice_by_hand(np.isin(warped, v), np.isin(fixed, v)) for v in STRUCTURES.values()]
    assert metrics["segmentation"]["dice_mean"] == pytest.approx(np.nanmean(dices), abs=1e-9)
    assert (out / "warped.nii.gz").is_file() and (out / "jacobian.nii.gz").is_file()


def test_training_notebook_trains_plots_and_cleans_up(kernel_env: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    nb = _run("02_training.ipynb", kernel_env / "training")
    text = "\n".join(_outputs(nb, "text"))
    assert "10 steps in" in text
    assert "folding (%) for N = 0..6" in text
    assert len(_outputs(nb, "png")) == 4  # curves, N, sigma_S, the trained model at work
    assert not list(tmp_path.glob("cvae-notebook-*")), "the notebook left its work folder behind"


def test_latent_space_notebook_encodes_classifies_and_transports(kernel_env: Path, demo_cohort: Path) -> None:
    nb = _run("03_latent_space.ipynb", kernel_env / "latent")
    text = "\n".join(_outputs(nb, "text"))
    assert "10 subjects, 16-D codes" in text
    assert "leak-free" in text and "paper's protocol" in text
    assert "ED + DCM" in text
    assert len(_outputs(nb, "png")) == 3  # projections, transport, prior samples


def test_motion_notebook_tracks_interpolates_simulates_and_transports(kernel_env: Path) -> None:
    # renders its own subjects (no cohort needed); trains a tiny motion model if motion-synthetic-acdc is missing
    nb = _run("04_motion.ipynb", kernel_env / "motion")
    text = "\n".join(_outputs(nb, "text"))
    assert "smoke run: 5-frame cycles" in text
    tracked = re.findall(r"(DCM|NOR): 5 frames tracked in [\d.]+ s; tracked ES frame (\d+) \(Info.cfg: (\d+)\)", text)
    assert [name for name, _, _ in tracked] == ["DCM", "NOR"], text
    assert all(1 <= int(es) <= 5 and info == "3" for _, es, info in tracked)
    epe = {method: (float(dcm), float(nor)) for method, dcm, nor in
           re.findall(r"^(motion model|linear|cubic|no motion)\s+([\d.]+)\s+([\d.]+)$", text, re.MULTILINE)}
    assert set(epe) == {"motion model", "linear", "cubic", "no motion"}, text
    assert all(0 < value < 30 for pair in epe.values() for value in pair)
    simulated = re.findall(r"(DCM|NOR): 1 simulated cycles, LVEF ([\d.]+) %", text)
    assert [name for name, _ in simulated] == ["DCM", "NOR"] and all(0 <= float(ef) <= 100 for _, ef in simulated)
    assert "NOR ED + DCM cycle" in text
    assert len(_outputs(nb, "png")) == 7  # phase, frames, volumes, motion matrix, EPE, simulation, transport


def test_parameters_are_injected_after_the_tagged_cell() -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("A = 1", metadata={"tags": ["parameters"]}),
                                         nbformat.v4.new_code_cell("print(A)")])
    executor.inject_parameters(nb, {"A": "x", "B": 2})
    assert [c.source for c in nb.cells] == ["A = 1", "A = 'x'\nB = 2", "print(A)"]
    with pytest.raises(ValueError, match="tagged 'parameters'"):
        executor.inject_parameters(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("A = 1")]), {"A": 2})


def test_leaked_paths_are_found_in_any_text_output() -> None:
    leak = str(NOTEBOOKS / "secret.txt")
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("", outputs=[nbformat.v4.new_output("stream", name="stdout", text="relative/ok\n")]),
        nbformat.v4.new_code_cell("", outputs=[nbformat.v4.new_output("stream", name="stderr", text=f"in {leak}\n")]),
        nbformat.v4.new_code_cell("", outputs=[nbformat.v4.new_output("execute_result", data={"text/plain": leak})]),
    ])
    found = executor.leaked_paths(nb)
    assert [line.split(":")[0] for line in found] == ["cell 1", "cell 2"]


@pytest.mark.parametrize("name", executor.NOTEBOOKS)
def test_committed_notebooks_hold_small_outputs_of_a_full_run(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code), f"{name} is not fully executed: run notebooks/execute.py"
    assert not any(output.output_type == "error" for cell in code for output in cell.outputs)
    assert executor.leaked_paths(nb) == []
    assert executor.large_images(nb) == []
    assert not any("execution" in cell.metadata for cell in nb.cells)
    text = "\n".join(_outputs(nb, "text"))
    assert "10 steps in" not in text and "smoke run" not in text, "fast-mode outputs were committed"
