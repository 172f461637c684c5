"""``cvae adapt``: unsupervised fine-tuning on an unlabelled cohort, its time limit, early stopping, resume and
refusals; the validation objective; the parallel preprocessing it starts with."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_MODEL, TINY_SIZE, TINY_SPACING, as_cine_only, numpy_lcc, write_patient
from cvae.checkpoint import load_checkpoint, read_config, save_checkpoint
from cvae.cli import main as cvae_main
from cvae.data.dataset import PairDataset
from cvae.model import CVAERegistration, ModelConfig
from cvae.training import adapt as adapt_module
from cvae.training.adapt import adapt, validate_objective
from cvae.training.config import AdaptConfig


@pytest.fixture
def cohort(tmp_path: Path) -> Path:
    """Four subjects with images only: no segmentation at all; two of them have only a cine file and no group."""
    root = tmp_path / "mine"
    for number in range(1, 5):
        folder = write_patient(root / "training", number, labels=False, seed=number, es=5)
        if number % 2 == 0:
            as_cine_only(folder)
    return root


@pytest.fixture
def base(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "base", CVAERegistration(ModelConfig(**TINY_MODEL)), spacing=TINY_SPACING)


def common(cohort: Path, base: Path, out: Path, cache: Path) -> list[str]:
    return ["adapt", "--checkpoint", str(base), "--data", str(cohort), "--out", str(out), "--cache-dir", str(cache),
            "--val-subjects", "1", "--threads", "1", "--workers", "1", "--no-progress"]


def log_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_adapt_runs_on_images_only_and_stops_at_its_time_limit(cohort, base, tmp_path, capsys):
    out, cache = tmp_path / "run", tmp_path / "cache"
    args = common(cohort, base, out, cache)
    args[args.index("--workers") + 1] = "2"
    assert cvae_main([*args, "--minutes", "0.05", "--val-every", "2", "--patience", "0"]) == 0
    said = capsys.readouterr().out.strip()
    assert said.startswith("adapted ") and f"{out}/best" in said and "\n" not in said
    # the whole cohort (two subjects from their cine files) was preprocessed before the first step
    assert len(list(cache.rglob("*.npz"))) == 4
    # it stopped at the first step or validation that took it past 3 s
    lines = log_lines(out)
    trainer = json.loads((out / "last" / "trainer.json").read_text())
    assert trainer["elapsed_s"] >= 3.0 and trainer["step"] < 100000
    assert sum(line["sec"] for line in lines) == pytest.approx(trainer["elapsed_s"], rel=1e-3, abs=0.01)
    last_step = max(i for i, line in enumerate(lines) if line["kind"] == "train")
    assert trainer["elapsed_s"] - sum(line["sec"] for line in lines[last_step:]) <= 3.0
    # best/ is a checkpoint like any other, with a model card that says what it was adapted on
    model, config = load_checkpoint(out / "best", "cpu")
    assert config["training"]["adapted_from"] == str(base) and config["spacing"] == list(TINY_SPACING)
    card = (out / "best" / "README.md").read_text()
    assert str(cohort) in card and "No segmentation was read" in card and "3 subjects to adapt on" in card
    assert "val_lcc" in config["metrics"] and model.config.image_size == TINY_SIZE


def test_early_stopping_keeps_the_unadapted_model_when_validation_never_improves(cohort, base, tmp_path,
                                                                              monkeypatch):
    scores = iter([0.5, 0.4, 0.3, 0.2, 0.1])

    def falling(model, dataset, indices, device):
        return {"val_lcc": next(scores), "val_similarity": 0.0, "val_negative_jacobian": 0.0}

    monkeypatch.setattr(adapt_module, "validate_objective", falling)
    cfg = AdaptConfig(checkpoint=str(base), data=str(cohort), out=str(tmp_path / "run"), minutes=0.0, patience=2,
                      val_every=1, val_subjects=1, workers=1, cache_dir=str(tmp_path / "cache"), threads=1)
    out, state, before = adapt(cfg, progress=False)
    assert state.step == 2 and before["val_lcc"] == 0.5
    assert [line["val_lcc"] for line in log_lines(out) if line["kind"] == "val"] == [0.4, 0.3]
    assert read_config(out / "best")["metrics"]["val_lcc"] == 0.5
    unadapted, best, last = (load_file(str(p / "model.safetensors")) for p in (base, out / "best", out / "last"))
    assert all(torch.equal(unadapted[k], best[k]) for k in unadapted)
    assert any(not torch.equal(unadapted[k], last[k]) for k in unadapted)  # two steps did change the weights


def test_a_run_resumes_and_is_never_restarted_silently(cohort, base, tmp_path, capsys):
    out, cache = tmp_path / "run", tmp_path / "cache"
    args = [*common(cohort, base, out, cache), "--minutes", "0", "--val-every", "2", "--patience", "0"]
    assert cvae_main([*args, "--steps", "3"]) == 0
    assert cvae_main([*args, "--steps", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--resume" in err and "\n" not in err
    assert cvae_main([*args, "--steps", "5", "--resume"]) == 0
    assert [line["step"] for line in log_lines(out) if line["kind"] == "train"] == [1, 2, 3, 4, 5]
    assert json.loads((out / "last" / "trainer.json").read_text())["step"] == 5
    # the card of the resumed run still compares with the unadapted model
    assert read_config(out / "last")["training"]["unadapted"] == read_config(out / "best")["training"]["unadapted"]


@pytest.mark.parametrize("case, message", [
    ("same-frames", "ED = ES"),
    ("one-subject", "at least 2"),
    ("no-data", "--data is required"),
    ("bad-split", "--split"),
])
def test_refusals_are_one_line_and_write_nothing(case, message, cohort, base, tmp_path, capsys):
    out = tmp_path / "run"
    args = common(cohort, base, out, tmp_path / "cache")
    if case == "same-frames":
        info = cohort / "training" / "patient002" / "Info.cfg"
        info.write_text(info.read_text().replace("ES: 5", "ES: 1"))  # a cine-only subject
    elif case == "one-subject":
        args[args.index("--data") + 1] = str(write_patient(tmp_path / "single" / "training", 7, labels=False).parent)
    elif case == "no-data":
        args[args.index("--data") + 1] = ""
    else:
        args += ["--split", "validation"]
    assert cvae_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cvae adapt: error:") and message in err and "\n" not in err, err
    assert not out.exists()


def test_the_validation_objective_is_the_lcc_of_the_registered_pairs(cohort, tmp_path):
    """A model whose velocity head is zero registers by the identity: its validation LCC is the LCC of the images
    themselves, computed here by scipy."""
    torch.manual_seed(1)
    model = CVAERegistration(ModelConfig(**TINY_MODEL)).double()
    with torch.no_grad():
        model.decoder.velocity.weight.zero_()
        model.decoder.velocity.bias.zero_()
    dataset = PairDataset(cohort, "training", TINY_SIZE, TINY_SPACING, tmp_path / "cache")
    items = [dataset[i] for i in (1, 3)]
    expected = np.mean([numpy_lcc(it["fixed"][0].double().numpy(), it["moving"][0].double().numpy(),
                                  model.config.sigma_lcc, model.config.kernel_lcc) for it in items])

    class Double(PairDataset):  # the model runs in float64 for an exact comparison
        def __getitem__(self, index):
            item = super().__getitem__(index)
            return {**item, "fixed": item["fixed"].double(), "moving": item["moving"].double()}

    double = Double(cohort, "training", TINY_SIZE, TINY_SPACING, tmp_path / "cache")
    scores = validate_objective(model, double, [1, 3], torch.device("cpu"))
    assert 0.05 < expected < 0.95
    assert scores["val_lcc"] == pytest.approx(expected, rel=1e-9)
    assert scores["val_similarity"] == pytest.approx(model.config.lam * (1 - expected), rel=1e-9)
    assert scores["val_negative_jacobian"] == 0.0


def test_preprocessing_in_several_processes_gives_the_same_pairs(cohort, tmp_path):
    one = PairDataset(cohort, "training", TINY_SIZE, TINY_SPACING, tmp_path / "a")
    two = PairDataset(cohort, "training", TINY_SIZE, TINY_SPACING, tmp_path / "b")
    info = cohort / "training" / "patient003" / "patient003_frame05.nii.gz"
    info.write_bytes(info.read_bytes()[:200])  # a corrupt file: skipped by both, with a warning
    with pytest.warns(UserWarning, match="patient003"):
        assert one.prepare(workers=1) == 3
    with pytest.warns(UserWarning, match="patient003"):
        assert two.prepare(workers=2, per_process=1) == 3  # two processes for four subjects
    assert one.subjects == two.subjects == ["patient001", "patient002", "patient004"]
    for a, b in zip((one[i] for i in range(3)), (two[i] for i in range(3))):
        assert torch.equal(a["fixed"], b["fixed"]) and torch.equal(a["moving"], b["moving"])
