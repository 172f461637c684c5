"""``cvae train``: train the CVAE, single process or ``torchrun`` + DistributedDataParallel
(:func:`cvae.training.train.train`).

    cvae train --data data/synthetic-acdc --out runs/cvae --steps 20000
    torchrun --nproc_per_node=2 -m cvae.commands.train --data ... --out ...   # DDP (gloo on CPU, nccl on CUDA)
"""
from __future__ import annotations

import argparse
import sys

from cvae.cli import run_command
from cvae.config import add_config_arguments, config_from_arguments
from cvae.training.config import TrainConfig

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cvae train", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_arguments(parser, TrainConfig)
    return parser


def main(argv: list[str] | None = None) -> int:
    values = vars(_parser().parse_args(argv))

    def body() -> str:
        from cvae.training.loop import run_summary
        from cvae.training.train import train
        return run_summary(train(config_from_arguments(TrainConfig, values)))

    return run_command("cvae train", body)


if __name__ == "__main__":  # torchrun runs a module
    sys.exit(main())
