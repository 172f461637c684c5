"""Server-side speed of the app at 128 x 128 x 32 on this machine, against the targets of the app's issue.

    .venv/bin/python benchmarks/app_speed.py [--repeats 5] [--checkpoint synthetic-acdc] [--data DIR]

Measures what the server does for each interaction (the browser's own drawing is not included):

* **slice change**: building the six-panel Register figure for one slice and serialising it as Streamlit does
  (``plotly.io.to_json``); the registration itself is cached;
* **latent slider move**: decoding a new code for the subject's ED image (not cached: every move is a new code),
  measuring the simulated ES volume, building and serialising the four-panel figure;
* **registration, end to end**: reading the preprocessed pair from the on-disk cache, one forward pass, the warped
  segmentation and the metrics table, and the first figure; and the same from two uploaded NIfTI files (staging,
  validation, preprocessing);
* **AppTest reruns**: a whole script run of the page after moving a slider, as Streamlit executes it (includes
  every cached call, every widget and every figure of the page);
* **cold start**: a fresh Python process importing the app's modules, loading the model and running the home page
  (AppTest), i.e. what happens between ``streamlit run`` and the first page.

Uses the checkpoint given (default ``$CVAE_CHECKPOINT`` or ``synthetic-acdc``) and the cohort ``--data`` (default
:func:`cvae.paths.data_root`); without them, a randomly initialised paper-sized model and a 5-subject synthetic
cohort in a temporary folder (times do not depend on the weights). Prints a Markdown table; times are the median
and the minimum over ``--repeats`` runs, in seconds.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import plotly.io as pio
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cvae import figures as F  # noqa: E402
from cvae.app import cached as C  # noqa: E402
from cvae.app import checkpoints as K  # noqa: E402
from cvae.app import cohort as H  # noqa: E402
from cvae.app import compute  # noqa: E402
from cvae.checkpoint import CheckpointError, resolve_checkpoint, save_checkpoint  # noqa: E402
from cvae.data.acdc import find_subjects  # noqa: E402
from cvae.data.dataset import PairDataset  # noqa: E402
from cvae.data.synthetic import make_cohort  # noqa: E402
from cvae.io.uploads import Upload, staged_uploads  # noqa: E402
from cvae.model import CVAERegistration  # noqa: E402
from cvae.paths import data_root  # noqa: E402

from timing import timed  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

#: operation -> target (seconds) from the issue.
TARGETS = {"slice change": 0.5, "latent slider move": 0.5, "registration": 1.0, "cold start": 10.0}


def prepare(checkpoint: str | None, data: str | None, scratch: Path) -> tuple[str, Path, list[str]]:
    """The checkpoint folder and cohort to use, and notes on any stand-in."""
    notes = []
    try:
        folder = str(resolve_checkpoint(checkpoint or K.default_checkpoint()))
    except CheckpointError as exc:
        torch.manual_seed(0)
        folder = str(save_checkpoint(scratch / "random", CVAERegistration()))
        notes.append(f"no checkpoint ({exc}); a randomly initialised 128 x 128 x 32 model stands in")
    root = Path(data) if data else data_root()
    if H.cohort_missing(root):
        root = make_cohort(scratch / "cohort", n_train=0, n_test=5, seed=0, workers=1)
        notes.append("no cohort; a 5-subject synthetic cohort stands in")
    return folder, root, notes


def cold_start(env: dict[str, str]) -> float:
    """Seconds for a fresh interpreter to import the app, load the model and run the home page once."""
    code = ("import time; t = time.perf_counter()\n"
            "from streamlit.testing.v1 import AppTest\n"
            f"at = AppTest.from_file({str(ROOT / 'app.py')!r}, default_timeout=300).run()\n"
            "assert not at.exception, at.exception\n"
            "at.switch_page('pages/register.py').run()\n"
            "assert not at.exception, at.exception\n"
            "print(time.perf_counter() - t)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per operation (default 5)")
    parser.add_argument("--checkpoint", default=None, help="checkpoint name or folder (default $CVAE_CHECKPOINT "
                        "or synthetic-acdc)")
    parser.add_argument("--data", default=None, help="cohort folder (default $CVAE_DATA or data/synthetic-acdc)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="cvae-app-speed-") as tmp:
        scratch = Path(tmp)
        checkpoint, root, notes = prepare(args.checkpoint, args.data, scratch)
        os.environ.setdefault("CVAE_CACHE", str(scratch / "cache"))
        model, config = C.get_model(checkpoint)
        size, spacing = K.grid_of(model, config)
        info = sorted((i for i in find_subjects(root, None, skip_bad=True)), key=lambda i: i.split != "testing")[0]
        subject = info.subject
        pair = C.subject_pair(str(root), subject, size, spacing)  # preprocess once: the app caches it on disk
        rows: list[tuple[str, str, float, float]] = []

        registration = compute.register_pair(model, pair)
        for view in F.VIEWS:
            index = F.n_slices(size, view) // 2
            median, best = timed(lambda: pio.to_json(F.registration_figure(registration.volumes, view, index),
                                                     validate=False), args.repeats)
            rows.append(("slice change", f"Register figure, {view} slice, build + serialise", median, best))

        rng = np.random.default_rng(0)
        d = model.config.latent_dim

        def slider_move() -> None:
            z = registration.mu + rng.normal(0, 0.5, d)
            decoded = compute.decode_pair(model, z, pair.moving, pair.moving_label, pair.spacing)
            pio.to_json(F.deformation_figure(pair.moving, decoded.warped, decoded.displacement, decoded.jacobian,
                                             pair.spacing, "axial", size[2] // 2, moving_label=pair.moving_label,
                                             warped_label=decoded.warped_label), validate=False)

        median, best = timed(slider_move, args.repeats)
        rows.append(("latent slider move", "decode a new code + LV volumes + figure", median, best))

        def register_cohort_subject() -> None:
            loaded = PairDataset(root, None, size, spacing, subjects=[subject]).pair(0)  # on-disk cache
            result = compute.register_pair(model, loaded)
            pio.to_json(F.registration_figure(result.volumes, "axial", size[2] // 2), validate=False)

        median, best = timed(register_cohort_subject, args.repeats)
        rows.append(("registration", "cohort subject: cached pair -> network -> metrics -> figure", median, best))
        network = timed(lambda: compute.register_pair(model, pair), args.repeats)
        rows.append(("registration", "of which: network + warped labels + Dice/HD95 table", *network))
        uploads = (Upload(info.es_image.name, info.es_image.read_bytes()),
                   Upload(info.ed_image.name, info.ed_image.read_bytes()))

        def register_upload() -> None:
            with staged_uploads(*uploads) as staged:
                loaded = staged.preprocess(size, spacing)
            result = compute.register_pair(model, loaded)
            pio.to_json(F.registration_figure(result.volumes, "axial", size[2] // 2), validate=False)

        median, best = timed(register_upload, args.repeats)
        rows.append(("registration", "two uploaded NIfTI files: stage, validate, preprocess, register, figure",
                     median, best))

        env = {**os.environ, "CVAE_DATA": str(root), "CVAE_CHECKPOINT": checkpoint}
        from streamlit.testing.v1 import AppTest

        os.environ.update(env)
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300).run()
        at.switch_page("pages/register.py").run()
        values = iter(range(1, 10_000))
        median, best = timed(lambda: at.slider(key="register_slice_axial").set_value(next(values) % size[2]).run(),
                             args.repeats)
        rows.append(("slice change", "AppTest: whole Register page rerun after a slice move", median, best))
        at.switch_page("pages/latent_walk.py").run()
        median, best = timed(lambda: at.slider(key="walk_z_0").set_value(round(float(rng.uniform(-3, 3)), 2)).run(),
                             args.repeats)
        rows.append(("latent slider move", "AppTest: whole Latent walk page rerun after a z1 move", median, best))

        starts = [cold_start(env) for _ in range(max(1, min(3, args.repeats)))]
        rows.append(("cold start", "fresh process: imports, model, Home + Register pages", statistics.median(starts),
                     min(starts)))

    print(f"# App speed ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())})\n")
    print(f"Grid {' x '.join(map(str, size))}; checkpoint `{checkpoint}`; cohort `{root}`; median and minimum of "
          f"{args.repeats} runs.\n")
    print("| interaction | what is timed | median (s) | min (s) | target (s) | median within target |")
    print("|---|---|---|---|---|---|")
    for kind, what, median, best in rows:
        target = TARGETS[kind]
        print(f"| {kind} | {what} | {median:.3f} | {best:.3f} | < {target:g} | {'yes' if median < target else 'no'} |")
    for note in notes:
        print(f"\nNote: {note}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
