"""``cvae adapt``: fine-tune a trained CVAE on a cohort of unlabelled images (:func:`cvae.training.adapt.adapt`)."""
from __future__ import annotations

import argparse

from cvae.cli import run_command
from cvae.config import add_config_arguments, config_from_arguments
from cvae.training.config import AdaptConfig

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cvae adapt", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_arguments(parser, AdaptConfig)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    values = vars(_parser().parse_args(argv))
    progress = not values.pop("no_progress")

    def body() -> str:
        from cvae.checkpoint import read_config
        from cvae.training.adapt import SCORE, adapt
        cfg = config_from_arguments(AdaptConfig, values)
        out, state, before = adapt(cfg, progress)
        best = read_config(out / "best")["metrics"]
        return (f"adapted {cfg.checkpoint} in {state.step} steps ({state.elapsed / 60:.1f} min): validation LCC "
                f"{before[SCORE]:.4f} -> {best[SCORE]:.4f}; checkpoint in {out}/best (use --checkpoint {out}/best)")

    return run_command("cvae adapt", body)
