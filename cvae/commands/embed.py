"""``cvae embed``: encode a cohort's (ES, ED) pairs to a CSV table of latent codes and clinical measures
(:func:`cvae.latent.cohort.encode_cohort`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from cvae.cli import run_command

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cvae embed", description="Encode a cohort's (ES, ED) pairs to latent "
                                     "codes (mu, sigma) with clinical measures from the labels; writes a CSV.")
    parser.add_argument("--data", default=None, help="ACDC-style cohort folder (default: $CVAE_DATA or "
                        "data/synthetic-acdc)")
    parser.add_argument("--checkpoint", default="synthetic-acdc", help="checkpoint name or folder "
                        "(default synthetic-acdc)")
    parser.add_argument("--out", required=True, help="output CSV file")
    parser.add_argument("--split", default="testing", choices=["training", "testing", "all"],
                        help="which subjects (default testing)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per forward pass (default 8)")
    parser.add_argument("--no-cache", action="store_true", help="recompute even if a cached table exists")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``cvae embed``: encode a cohort to a CSV table of latent codes and clinical measures. Exit 2 on bad input."""
    args = _parser().parse_args(argv)
    out = Path(args.out).expanduser()

    def body() -> str:
        from cvae.io.atomic import check_writable, write_csv
        from cvae.latent.cohort import encode_cohort
        from cvae.latent.table import latent_dim_of
        check_writable(out, folder=False)
        table = encode_cohort(args.checkpoint, args.data, None if args.split == "all" else args.split,
                              device=args.device, batch_size=args.batch_size, cache=not args.no_cache,
                              progress=True)
        write_csv(table, out)
        return f"wrote {len(table)} subjects x {latent_dim_of(table)}-D codes to {out}"

    return run_command("cvae embed", body)
