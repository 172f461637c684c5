"""``cvae standardise``: re-centre and re-scale a checkpoint's latent space to a cohort's codes
(:func:`cvae.latent.standardise.standardise_checkpoint`)."""
from __future__ import annotations

import argparse

from cvae.cli import run_command

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cvae standardise", description="Re-centre and re-scale a checkpoint's "
                                     "latent space to a cohort's codes (exact: registrations are unchanged; the "
                                     "KL to N(0, I) drops); writes a new checkpoint folder.")
    parser.add_argument("--checkpoint", required=True, help="checkpoint name or folder (not yet standardised)")
    parser.add_argument("--data", required=True, help="ACDC-style cohort folder whose codes to standardise to")
    parser.add_argument("--split", default="training", choices=["training", "testing", "all"],
                        help="which subjects (default training)")
    parser.add_argument("--out", required=True, help="new checkpoint folder (must not exist)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``cvae standardise``; exit 0 on success, 2 with a one-line message on bad input."""
    args = _parser().parse_args(argv)

    def body() -> str:
        from cvae.latent.standardise import standardise_checkpoint
        done = standardise_checkpoint(args.checkpoint, args.data, args.out,
                                      None if args.split == "all" else args.split, args.device)
        return (f"standardised on {done['subjects']} subjects ({done['split']}): mean KL "
                f"{done['mean_kl_before']:.3f} -> {done['mean_kl_after']:.3f} nats; velocity on one pair changed by "
                f"at most {done['velocity_change']:.2e} voxels (max |v| {done['velocity_max']:.3f}); wrote {args.out}")

    return run_command("cvae standardise", body)
