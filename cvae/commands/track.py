"""``cvae track``: register the ED frame of a cine to every frame, carry its labels along, measure the volume curves
(:func:`cvae.motion.track.track_files`)."""
from __future__ import annotations

import argparse

from cvae.cli import run_command

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cvae track", description=__doc__.split("\n")[0])
    parser.add_argument("--cine", required=True, help="the cine (NIfTI, 4-D X, Y, Z, T), e.g. patient001_4d.nii.gz")
    parser.add_argument("--out", required=True, help="output folder: new, empty, or one an earlier cvae track wrote")
    parser.add_argument("--ed-frame", type=int, default=1, help="the ED frame, numbered from 1 (default 1, as ACDC)")
    parser.add_argument("--ed-seg", help="segmentation of the ED frame (ACDC labels 0-3, on the cine's grid): carried "
                        "to every frame, with volume curves and ejection fractions")
    parser.add_argument("--checkpoint", default="synthetic-acdc", help="checkpoint name or folder (default "
                        "synthetic-acdc)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda[:N] (default auto)")
    parser.add_argument("--batch-size", type=int, default=4, help="frames per forward pass (default 4)")
    parser.add_argument("--overwrite", action="store_true", help="write into a folder holding other files, "
                        "replacing only those named like the outputs")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit 0 on success, 2 with a one-line message on bad input."""
    args = _parser().parse_args(argv)

    def body() -> str:
        from cvae.motion.track import track_files
        done = track_files(args.cine, args.out, args.checkpoint, args.ed_frame, args.ed_seg, args.device,
                           args.batch_size, args.overwrite)
        line = (f"tracked {done['frames']} frames in {done['seconds']:.1f} s: ES frame {done['es_frame']} "
                f"({done['es_frame_from']})")
        if "LVEF_percent" in done:
            line += (f"; LVEDV {done['LVEDV_ml']:.1f} mL, LVESV {done['LVESV_ml']:.1f} mL, LVEF "
                     f"{done['LVEF_percent']:.1f} %")
        return f"{line}; wrote {', '.join(done['files'])} to {args.out}"

    return run_command("cvae track", body)
