"""benchmarks/lvef_ceiling.py: the simulated-ES LVEF of the exact synthetic transform against the truth."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cvae.checkpoint import save_checkpoint
from cvae.data.dataset import PairDataset
from cvae.model import CVAERegistration, ModelConfig

from conftest import load_benchmark, write_patient

SIZE, SPACING = (128, 128, 32), (1.5, 1.5, 3.15)  # the shipped model's grid


def small_model() -> CVAERegistration:
    torch.manual_seed(0)
    return CVAERegistration(ModelConfig(image_size=SIZE, encoder_channels=(4, 4, 4, 2), decoder_channels=(4, 4, 4),
                                        head_channels=4, kernel_smooth=7)).eval()


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return save_checkpoint(tmp_path / "ckpt", small_model(), spacing=SPACING)


def test_the_exact_transform_reproduces_the_true_lvef(tiny_cohort, tiny_cache, checkpoint, tmp_path, capsys):
    ceiling = load_benchmark("lvef_ceiling")
    model = small_model()
    dataset = PairDataset(tiny_cohort, "testing", SIZE, SPACING, cache_dir=tiny_cache)
    table = ceiling.lvef_table(model, dataset)
    assert len(table) == len(dataset) and set(table["group"]) == {"NOR", "DCM", "HCM", "MINF", "RV"}
    # an untrained model barely moves the labels (LVEF near 0); the exact transform lands near the truth and ranks
    # the subjects as the truth does, up to the bias of nearest-neighbour label warping on 3.15 mm slices
    assert (table["checkpoint"].abs() < 10).all() and (table["true"] > 15).all()
    error = (table["exact"] - table["true"]).abs()
    assert error.max() < 12 and error.mean() < 6, table
    assert list(table.sort_values("true")["subject"]) == list(table.sort_values("exact")["subject"])

    out = tmp_path / "ceiling.md"
    assert ceiling.main(["--data", str(tiny_cohort), "--checkpoint", str(checkpoint), "--device", "cpu",
                         "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.strip() == out.read_text().strip()
    assert f"`python benchmarks/lvef_ceiling.py --data {tiny_cohort} " in text
    assert "| NOR | 1 | " in text and text.count("\n| ") == 1 + 5  # the header, one row per group


def test_a_cohort_without_the_exact_transform_is_refused(tmp_path, checkpoint, capsys):
    root = tmp_path / "acdc"
    write_patient(root / "testing", 101, group="NOR", seed=1)
    ceiling = load_benchmark("lvef_ceiling")
    assert ceiling.main(["--data", str(root), "--checkpoint", str(checkpoint), "--device", "cpu"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("lvef_ceiling: error: ") and "needs the synthetic cohort" in error
    assert "\n" not in error
