"""Training: exact resume, checkpoints that load safely, DDP with torchrun, and the shipped checkpoint."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cvae.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from cvae.data.labels import STRUCTURES
from cvae.model import CVAERegistration, ModelConfig
from cvae.training.config import TrainConfig
from cvae.training.loop import check_run_folder, held_out_split, holds_run, validate
from cvae.commands.train import main
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
           "-m", "cvae.commands.train", "--data", str(tiny_cohort), "--out", str(out), "--steps", "3", *model_flags,
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


@pytest.mark.parametrize("name", ["synthetic-acdc", "synthetic-acdc-seg", "synthetic-acdc-dr"])
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


# ---------------------------------------------------------------------------------------------------------------
# a run is never restarted silently; --resume puts back a save killed between its renames; signals save and stop

#: The tiny model as command-line options (no booleans among them).
MODEL_FLAGS = [str(a) for k, v in TINY_MODEL.items()
               for a in ("--" + k.replace("_", "-"), *(v if isinstance(v, tuple) else (v,)))]


def cli_args(cohort: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    """``cvae train`` options of :func:`tiny_config` (``extra`` last: they win)."""
    return ["--data", str(cohort), "--out", str(out), *MODEL_FLAGS, "--lam", "5000", "--spacing",
            *map(str, TINY_SPACING), "--val-subjects", "2", "--val-every", "4", "--save-every", "2", "--threads", "1",
            "--cache-dir", str(cache), "--device", "cpu", *extra]


def folder_state(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder`` (hidden ones included): file bytes, ``None`` for a folder."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))}


def train_steps(out: Path) -> list[int]:
    return [d["step"] for d in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if d["kind"] == "train"]


def trainer_step(folder: Path) -> int:
    return json.loads((folder / "trainer.json").read_text())["step"]


@pytest.fixture(scope="module")
def run_at_step_4(tiny_cohort, tiny_cache, tmp_path_factory) -> tuple[Path, Path]:
    """A run folder at step 4 (``last/`` saved at 2 and 4, ``best/`` at 4) and a copy of its ``last/`` at step 2."""
    root = tmp_path_factory.mktemp("resumable")
    out = root / "run"
    train(tiny_config(tiny_cohort, out, tiny_cache, steps=2), progress=False)
    shutil.copytree(out / "last", root / "last-at-2")
    train(tiny_config(tiny_cohort, out, tiny_cache, steps=4, resume=True), progress=False)
    assert trainer_step(out / "last") == 4 and train_steps(out) == [1, 2, 3, 4]
    return out, root / "last-at-2"


@pytest.fixture
def run_copy(run_at_step_4, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run_at_step_4[0], out)
    return out


def test_holds_run(tmp_path):
    out = tmp_path / "run"
    assert not holds_run(out)  # missing
    out.mkdir()
    (out / "log.jsonl").write_text("")
    (out / "notes.txt").write_text("mine")
    assert not holds_run(out)  # an empty log and other files are no run
    (out / "log.jsonl").write_text('{"kind": "train", "step": 1}\n')
    assert holds_run(out)
    (out / "log.jsonl").unlink()
    for entry in ("last", "best", ".last.old", ".last.tmp-abc"):
        (out / entry).mkdir()
        assert holds_run(out), entry
        (out / entry).rmdir()
    assert not holds_run(out)


def test_a_run_folder_is_not_restarted_without_resume(run_copy, tiny_cohort, tiny_cache, capsys):
    before = folder_state(run_copy)
    with pytest.raises(ValueError) as info:
        train(tiny_config(tiny_cohort, run_copy, tiny_cache, steps=6), progress=False)
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"--out {run_copy} holds a run already: continue it with --resume")
    assert folder_state(run_copy) == before
    # the command: one line, exit code 2, nothing changed
    assert main(cli_args(tiny_cohort, run_copy, tiny_cache, "--steps", "6")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"cvae train: error: {text}"]
    assert folder_state(run_copy) == before
    # leftovers of a killed save alone are a run too (check_run_folder, without loading any data)
    shutil.rmtree(run_copy / "best")
    (run_copy / "log.jsonl").unlink()
    os.replace(run_copy / "last", run_copy / ".last.tmp-killed")
    with pytest.raises(ValueError, match="holds a run already"):
        check_run_folder(run_copy, False)
    assert sorted(p.name for p in run_copy.iterdir()) == [".last.tmp-killed"]


@pytest.mark.parametrize("complete", [True, False], ids=["newest-complete", "newest-incomplete"])
def test_resume_puts_back_a_save_killed_between_its_renames(complete, run_copy, run_at_step_4, tiny_cohort,
                                                            tiny_cache):
    out = run_copy
    os.replace(out / "last", out / ".last.tmp-x7q")  # killed after its new last/ was complete, before the rename
    shutil.copytree(run_at_step_4[1], out / ".last.old")  # ... and after the old one (step 2) was moved aside
    if not complete:  # killed while writing the new one: the old one is the newest usable
        (out / ".last.tmp-x7q" / "trainer.json").unlink()
    recovered = 4 if complete else 2
    # mark the logged lines: those the resumed run keeps stay marked, those it writes again are new
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    (out / "log.jsonl").write_text("".join(json.dumps({**d, "before": True}) + "\n" for d in lines))

    train(tiny_config(tiny_cohort, out, tiny_cache, steps=6, resume=True), progress=False)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [d["step"] for d in log if d["kind"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]  # each step once: continued, not restarted
    assert all(d.get("before") for d in log if d["step"] <= recovered)
    assert not any(d.get("before") for d in log if d["step"] > recovered)  # logged again from the recovered step
    assert trainer_step(out / "last") == 6
    # the leftovers are gone: the unused one swept by the next save of last/
    assert sorted(p.name for p in out.iterdir()) == ["best", "last", "log.jsonl"]


@pytest.mark.parametrize("case", ["only-an-incomplete-leftover", "no-last", "last-without-training-state",
                                  "last-with-corrupt-trainer"])
def test_resume_without_a_loadable_checkpoint_is_one_line_and_changes_nothing(case, run_copy, tiny_cohort,
                                                                              tiny_cache, capsys):
    out = run_copy
    if case == "only-an-incomplete-leftover":
        os.replace(out / "last", out / ".last.tmp-x7q")
        (out / ".last.tmp-x7q" / "trainer.json").unlink()
    elif case == "no-last":
        shutil.rmtree(out / "last")
    elif case == "last-without-training-state":  # e.g. best/ copied over last/: weights, no optimiser or step
        shutil.rmtree(out / "last")
        shutil.copytree(out / "best", out / "last")
    else:
        (out / "last" / "trainer.json").write_text('{"step": 4, "optim')
    before = folder_state(out)
    assert main(cli_args(tiny_cohort, out, tiny_cache, "--steps", "6", "--resume")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cvae train: error: "), err
    if case in ("only-an-incomplete-leftover", "no-last"):
        assert f"--resume: {out} holds a run but no checkpoint of it loads" in err[0]
    assert folder_state(out) == before


@pytest.mark.parametrize("flags, option", [
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--save-every", "0"], "--save-every must be >= 1, got 0"),
    (["--val-every", "0"], "--val-every must be >= 1, got 0"),
    (["--steps", "-5"], "--steps must be >= 1, got -5"),
    (["--lr", "-0.1"], "--lr must be >= 0, got -0.1"),
    (["--lr", "nan"], "--lr must be >= 0, got nan"),
    (["--kl-warmup", "-1"], "--kl-warmup must be >= 0"),
    (["--lam", "-1"], "--lam must be >= 0, got -1.0"),
    (["--latent-dim", "0"], "--latent-dim must be >= 1, got 0"),
    (["--kernel-lcc", "4"], "--kernel-lcc an odd number >= 1, got 2.0 and 4"),
    (["--sigma-smooth", "0"], "--sigma-smooth must be > 0"),
    (["--spacing", "1", "0", "1"], "--spacing must be three voxel sizes > 0 mm, got 1.0 0.0 1.0"),
    (["--domain", "wild"], "--domain must be one of off, geometry, full, got 'wild'"),
])
def test_bad_settings_are_one_line_before_anything_is_loaded(flags, option, tmp_path, capsys):
    out = tmp_path / "run"
    # no data to load: the setting must be refused before anything would start
    assert main(["--data", str(tmp_path / "nonexistent"), "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cvae train: error: ") and option in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_an_out_that_cannot_be_a_run_folder_is_refused_before_the_data_is_read(tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    for out, message in ((a_file, "is a file: give a directory"), (a_file / "run", "is a file, not a folder")):
        assert main(["--data", str(tmp_path / "nonexistent"), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"cvae train: error: --out {out}") and message in err[0], err
    assert a_file.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_resume_says_which_model_settings_changed(run_copy, tiny_cohort, tiny_cache, capsys):
    # --steps 4: the run is there already, nothing to train; only what --resume says is looked at
    assert main(cli_args(tiny_cohort, run_copy, tiny_cache, "--steps", "4", "--resume")) == 0
    assert "note" not in capsys.readouterr().err  # the same settings: nothing to say
    assert main(cli_args(tiny_cohort, run_copy, tiny_cache, "--steps", "4", "--resume", "--lam", "100")) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "note" in line]
    assert notes == ["cvae train: note: resuming with lam=100.0 (the run had 5000.0)"]


def test_a_first_ctrl_c_saves_last_and_exits_130(tiny_cohort, tiny_cache, tmp_path, monkeypatch, capsys):
    import cvae.training.train as train_module

    real = train_module.loss_schedule

    def schedule(cfg, step):
        if step == 2:  # during the third step
            if signal.getsignal(signal.SIGINT) in (signal.default_int_handler, signal.SIG_IGN):
                raise AssertionError("no handler of the training loop for Ctrl-C")  # never interrupt pytest itself
            os.kill(os.getpid(), signal.SIGINT)
        return real(cfg, step)

    monkeypatch.setattr(train_module, "loss_schedule", schedule)
    out = tmp_path / "run"
    before = signal.getsignal(signal.SIGINT)  # pytest's handler (ignored in a background job or some workers)
    assert main(cli_args(tiny_cohort, out, tiny_cache, "--steps", "1000")) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "cvae train: interrupted (Ctrl-C): saved last/ at step 3 of 1000: continue with --resume"
    assert trainer_step(out / "last") == 3 and train_steps(out) == [1, 2, 3]
    assert signal.getsignal(signal.SIGINT) is before  # the handler of before the run is back


def test_sigterm_saves_last_and_exits_143_then_resume_continues(tiny_cohort, tiny_cache, tmp_path):
    out = tmp_path / "run"
    args = cli_args(tiny_cohort, out, tiny_cache, "--val-every", "1000", "--save-every", "1000")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "cvae.cli", "train", *args, "--steps", "1000000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            log = out / "log.jsonl"
            if log.is_file() and log.read_text().count('"kind": "train"') >= 3:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert (out / "log.jsonl").read_text().count('"kind": "train"') >= 3, "no training steps within 90 s"
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, stderr[-3000:]
    last_line = stderr.strip().splitlines()[-1].split("\r")[-1]
    prefix, suffix = "cvae train: stopped by SIGTERM: saved last/ at step ", " of 1000000: continue with --resume"
    assert last_line.startswith(prefix) and last_line.endswith(suffix), last_line
    assert "Traceback" not in stderr and stdout == ""
    step = int(last_line[len(prefix):-len(suffix)])
    assert step >= 3 and trainer_step(out / "last") == step
    assert max(train_steps(out)) == step
    assert not [p.name for p in out.iterdir() if p.name.startswith(".last.")]  # no .last.tmp-* or .last.old

    assert main([*args, "--steps", str(step + 2), "--resume"]) == 0
    assert train_steps(out) == list(range(1, step + 3)) and trainer_step(out / "last") == step + 2
