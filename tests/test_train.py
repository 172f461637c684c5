"""Training: exact resume, checkpoints that load safely, DDP with torchrun, and the shipped checkpoint."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cvae.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from cvae.data.labels import STRUCTURES
from cvae.model import CVAERegistration, ModelConfig
from cvae.training.config import TrainConfig
from cvae.training.loop import held_out_split, validate
from cvae.training.train import train

from conftest import TINY_MODEL, TINY_SPACING, dice_by_hand, folding_by_hand, nearest_warp


def tiny_config(cohort: Path, out: Path, cache: Path, latent_dim: int = 16, **kw) -> TrainConfig:
    return TrainConfig(data=str(cohort), out=str(out), spacing=TINY_SPACING,
                       model=ModelConfig(**TINY_MODEL, lam=5000.0, latent_dim=latent_dim), val_subjects=2,
                       val_every=4, save_every=2, threads=1, cache_dir=str(cache), **kw)


def train_losses(out: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return {d["step"]: d["loss"] for d in lines if d["kind"] == "train"}


def test_resume_continues_exactly(tiny_cohort, tiny_cache, tmp_path):
    schedule = dict(kl_delay=1, kl_warmup=2, code_warmup=4, latent_dim=4)
    full = train(tiny_config(tiny_cohort, tmp_path / "full", tiny_cache, steps=6, **schedule), progress=False)
    train(tiny_config(tiny_cohort, tmp_path / "cut", tiny_cache, steps=3, **schedule), progress=False)
    # A killed run may have logged steps after its last checkpoint (step 2 here): resume must rewind them.
    resumed = train(tiny_config(tiny_cohort, tmp_path / "cut", tiny_cache, steps=6, resume=True, **schedule),
                    progress=False)
    a, b = train_losses(full), train_losses(resumed)
    assert sorted(b) == list(range(1, 7))
    for step in range(1, 7):
        assert a[step] == pytest.approx(b[step], rel=1e-5), step
    wa = load_checkpoint(full / "last", "cpu")[0].state_dict()
    wb = load_checkpoint(resumed / "last", "cpu")[0].state_dict()
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    log = [json.loads(line) for line in (full / "log.jsonl").read_text().splitlines()]
    # validation every 4 steps and at the end; the last one scored the final weights, which last/ holds
    vals = [d for d in log if d["kind"] == "val"]
    assert [d["step"] for d in vals] == [4, 6]
    cfg = tiny_config(tiny_cohort, tmp_path / "full", tiny_cache, steps=6, **schedule)
    dataset, _, val_idx = held_out_split(cfg.data, cfg.model.image_size, cfg.spacing, cfg.cache_dir,
                                         cfg.val_subjects)
    final = load_checkpoint(full / "last", "cpu")[0]
    expected = validation_by_hand(final, dataset, val_idx)
    for key in ("val_dice", "val_dice_other_code", "val_negative_jacobian"):
        assert vals[-1][key] == pytest.approx(expected[key], abs=1e-9), key
    best = max(vals, key=lambda d: d["val_dice"])
    metrics = json.loads((full / "best" / "config.json").read_text())["metrics"]
    assert metrics["val_dice"] == best["val_dice"] and (full / "best" / "model.safetensors").is_file()
    # KL delay of 1 step, then a 2-step ramp; the code warm-up holds for 2 steps and fades over 2;
    # loss = similarity + KL weight * KL + code weight * code
    steps = [d for d in log if d["kind"] == "train"]
    assert [d["kl_weight"] for d in steps] == [0.0, 0.0, 0.5, 1.0, 1.0, 1.0]
    assert [d["code_weight"] for d in steps] == [300.0, 300.0, 300.0, 150.0, 0.0, 0.0]
    for d in steps:
        code = d["code_weight"] * d["code"] if "code" in d else 0.0
        assert d["loss"] == pytest.approx(d["similarity"] + d["kl_weight"] * d["kl"] + code, rel=1e-5)
        assert d["kl"] > 0
    assert all(d["code"] > 0 for d in steps[:4]) and not any("code" in d for d in steps[4:])


def test_fine_tuning_starts_from_the_init_weights_and_adds_the_label_term(tiny_cohort, tiny_cache, tmp_path):
    cfg = tiny_config(tiny_cohort, tmp_path / "tuned", tiny_cache, steps=2, lr=0.0, kl_delay=0, kl_warmup=0,
                      code_warmup=0, seg_weight=1000.0)
    torch.manual_seed(3)
    start = CVAERegistration(cfg.model)
    with torch.no_grad():
        start.decoder.velocity.weight.normal_(std=0.5)  # a deformation far from the identity
    init = save_checkpoint(tmp_path / "init", start, spacing=TINY_SPACING)
    out = train(dataclasses.replace(cfg, init=str(init)), progress=False)
    tuned = load_checkpoint(out / "last", "cpu")[0].state_dict()  # lr = 0: the init weights, unchanged
    assert all(torch.equal(tuned[k], v) for k, v in start.state_dict().items())
    steps = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [d for d in steps if d["kind"] == "train"]
    assert len(steps) == 2
    for d in steps:
        assert 0.0 < d["dice"] < 1.0 and d["seg_weight"] == 1000.0
        assert d["loss"] == pytest.approx(d["similarity"] + d["kl"] + 1000.0 * (1.0 - d["dice"]), rel=1e-5)
    with pytest.raises(ValueError, match=r"latent_dim=16 \(this run: 4\)"):
        train(dataclasses.replace(cfg, init=str(init), model=dataclasses.replace(cfg.model, latent_dim=4),
                                  out=str(tmp_path / "x")), progress=False)


def validation_by_hand(model: CVAERegistration, dataset, indices: list[int]) -> dict[str, float]:
    """What validation reports, recomputed: per held-out pair the mean Dice (structures empty in both maps left
    out) of the ED labels moved by the pair's transform (numpy nearest neighbour) against the ES labels, the same
    with the next pair's code, and the fraction of det J <= 0 by numpy finite differences; means over the pairs."""
    items = [dataset[i] for i in indices]

    def mean_dice(item, displacement: torch.Tensor) -> float:
        warped = nearest_warp(item["moving_label"][0].numpy(), displacement[0].numpy())
        fixed = item["fixed_label"][0].numpy()
        return float(np.nanmean([dice_by_hand(np.isin(warped, v), np.isin(fixed, v)) for v in STRUCTURES.values()]))

    with torch.no_grad():
        results = [model.register(item["fixed"][None], item["moving"][None], inverse=False) for item in items]
        others = [model.decode(results[(k + 1) % len(items)].mu, item["moving"][None]) for k, item in
                  enumerate(items)]
    return {"val_dice": float(np.mean([mean_dice(i, r.displacement) for i, r in zip(items, results)])),
            "val_dice_other_code": float(np.mean([mean_dice(i, o.displacement) for i, o in zip(items, others)])),
            "val_negative_jacobian": float(np.mean([folding_by_hand(r.displacement[0].numpy()) for r in results]))}


def test_validation_measures_what_the_code_adds(tiny_cohort, tiny_cache):
    cfg = tiny_config(tiny_cohort, Path("unused"), tiny_cache)
    dataset, _, val_idx = held_out_split(cfg.data, cfg.model.image_size, cfg.spacing, cfg.cache_dir,
                                         cfg.val_subjects)
    torch.manual_seed(0)
    model = CVAERegistration(cfg.model)
    with torch.no_grad():  # a decoder that moves the heart by several voxels, differently for different codes
        model.decoder.fc.weight.normal_(std=50.0)
        model.decoder.velocity.weight.normal_(std=0.5)
        model.encoder.mu.weight.normal_(std=1.0)
    informed = validate(model, dataset, val_idx, torch.device("cpu"))
    expected = validation_by_hand(model, dataset, val_idx)
    for key in ("val_dice", "val_dice_other_code", "val_negative_jacobian"):
        assert informed[key] == pytest.approx(expected[key], abs=1e-9), key
    assert abs(informed["val_dice_other_code"] - informed["val_dice"]) > 1e-3
    with torch.no_grad():  # a decoder blind to z: another pair's code gives exactly the same deformation
        model.decoder.fc.weight.zero_()
        for layer in model.decoder.film:
            layer.weight.zero_()
    blind = validate(model, dataset, val_idx, torch.device("cpu"))
    assert blind["val_dice_other_code"] == blind["val_dice"]


def test_checkpoint_errors_are_one_line(tmp_path):
    model = CVAERegistration(**TINY_MODEL)
    folder = save_checkpoint(tmp_path / "ckpt", model)
    loaded = load_model(folder, "cpu")
    assert all(torch.equal(loaded.state_dict()[k], model.state_dict()[k]) for k in model.state_dict())

    weights = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated") as info:
        load_model(folder, "cpu")
    assert "\n" not in str(info.value)

    save_checkpoint(folder, model)
    config = json.loads((folder / "config.json").read_text())
    config["model"]["latent_dim"] = 8
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="shape"):
        load_model(folder, "cpu")
    config["model"]["attention"] = True
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="attention"):
        load_model(folder, "cpu")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(folder, "cpu")
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nowhere", "cpu")


def test_torchrun_two_processes_keep_identical_weights(tiny_cohort, tiny_cache, tmp_path):
    model_flags = [str(a) for k, v in TINY_MODEL.items()
                   for a in ("--" + k.replace("_", "-"), *(v if isinstance(v, tuple) else (v,)))]  # no booleans
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "cvae.training.train", "--data", str(tiny_cohort), "--out", str(out), "--steps", "3", *model_flags,
           "--lam", "5000", "--spacing", *map(str, TINY_SPACING), "--val-subjects", "2",
           "--threads", "1", "--cache-dir", str(tiny_cache), "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    # the workers' own messages (e.g. "terminate called ...") come before torchrun's summary, which alone would
    # fill a tail of the output; progress bars are left out too
    worker_lines = [line for line in proc.stderr.splitlines()
                    if "torch/distributed" not in line and "step/s" not in line]
    assert proc.returncode == 0, "\n".join(worker_lines[:40])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    check = [d for d in log if d["kind"] == "ddp_check"]
    assert len(check) == 1 and len(check[0]["checksums"]) == 2
    assert check[0]["checksums"][0] == check[0]["checksums"][1]
    assert max(d["step"] for d in log if d["kind"] == "train") == 3
    assert json.loads((out / "last" / "config.json").read_text())["training"]["world_size"] == 2


CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"


@pytest.mark.parametrize("name", ["synthetic-acdc", "synthetic-acdc-seg"])
def test_shipped_checkpoint_registers_a_test_pair_better_than_identity(name, tiny_cohort, tiny_cache):
    from cvae.data.dataset import PairDataset
    from cvae.data.labels import STRUCTURES
    from cvae.evaluation.metrics import dice
    from cvae.fields import warp

    if not (CHECKPOINTS / name / "model.safetensors").is_file():
        pytest.skip(f"shipped checkpoint {name} not present")
    model = load_model(name, "cpu")
    data = PairDataset(tiny_cohort, "testing", model.config.image_size, cache_dir=tiny_cache)
    gains = []
    for i in range(len(data)):
        item = data[i]
        with torch.no_grad():
            r = model.register(item["fixed"][None], item["moving"][None], inverse=False)
        warped = warp(item["moving_label"][None].float(), r.displacement, mode="nearest")[0, 0].numpy()
        ref, moving = item["fixed_label"][0].numpy(), item["moving_label"][0].numpy()
        after = np.mean([dice(np.isin(warped, v), np.isin(ref, v)) for v in STRUCTURES.values()])
        before = np.mean([dice(np.isin(moving, v), np.isin(ref, v)) for v in STRUCTURES.values()])
        gains.append(after - before)
        assert float((r.jacobian <= 0).float().mean()) == 0.0
    assert np.mean(gains) > 0.05
