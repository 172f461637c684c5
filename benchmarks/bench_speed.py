"""Speed of one registration and of the exponentiation layer, side by side with MONAI and VoxelMorph.

    .venv/bin/python benchmarks/bench_speed.py [--repeats 10] [--checkpoint synthetic-acdc]

Prints a Markdown report: the machine, the time of each stage of a registration at 128 x 128 x 32 on this CPU, and the
scaling-and-squaring layer against MONAI's ``DVF2DDF`` and VoxelMorph's ``IntegrateVelocityField`` at the same number
of steps, checking that the three give the same field away from the borders (they differ only in padding mode).
Times are the minimum over repeats (the least disturbed run), in milliseconds.
"""
from __future__ import annotations

import argparse
import platform

import torch

from cvae.checkpoint import CheckpointError, load_model
from cvae.data.grid import DEFAULT_SIZE
from cvae.fields import compose, exponentiate, gaussian_kernel1d, gaussian_smooth, jacobian_determinant, warp
from cvae.model import CVAERegistration

from timing import timed  # benchmarks/ is on sys.path when run as a script

SHAPE = DEFAULT_SIZE


def best_ms(fn, repeats: int) -> float:
    """Minimum over ``repeats`` runs (the least disturbed one), in milliseconds."""
    return 1000 * timed(fn, repeats)[1]


def smooth_velocity(max_norm: float, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    v = gaussian_smooth(torch.randn(1, 3, *SHAPE, generator=gen), gaussian_kernel1d(6.0, 25))
    return v * (max_norm / v.norm(dim=1).max())


def interior(t: torch.Tensor, m: int = 16) -> torch.Tensor:
    """Drop ``m`` voxels in-plane and ``m / 4`` slices on each side, where the peers' padding modes differ."""
    return t[..., m:-m, m:-m, m // 4:-(m // 4)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--checkpoint", default="synthetic-acdc")
    args = parser.parse_args()
    torch.manual_seed(0)
    try:
        model, source = load_model(args.checkpoint, "cpu"), f"checkpoint `{args.checkpoint}`"
    except CheckpointError:
        model, source = CVAERegistration().eval(), "randomly initialised paper-sized model"
    gen = torch.Generator().manual_seed(1)
    fixed, moving = torch.rand(1, 1, *SHAPE, generator=gen), torch.rand(1, 1, *SHAPE, generator=gen)
    print(f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, model: {source} ({model.num_parameters():,} parameters)\n")

    rows = []
    with torch.no_grad():
        rows.append(("register (warped, displacement, Jacobian)", best_ms(
            lambda: model.register(fixed, moving, inverse=False), args.repeats)))
        rows.append(("register + inverse transform", best_ms(lambda: model.register(fixed, moving), args.repeats)))
        mu, _ = model.encode(fixed, moving)
        raw = model.decoder(mu, moving)
        v = model.smooth(raw)
        u = model.exponentiate(v)
        rows += [("  encoder", best_ms(lambda: model.encode(fixed, moving), args.repeats)),
                 ("  decoder", best_ms(lambda: model.decoder(mu, moving), args.repeats)),
                 ("  Gaussian smoothing (sigma 3, kernel 15)", best_ms(lambda: model.smooth(raw), args.repeats)),
                 ("  exponentiation (N = 4)", best_ms(lambda: model.exponentiate(v), args.repeats)),
                 ("  warp", best_ms(lambda: warp(moving, u), args.repeats)),
                 ("  Jacobian determinant", best_ms(lambda: jacobian_determinant(u), args.repeats))]
    model.train()

    def train_step() -> None:
        model.zero_grad()
        model(fixed, moving)["loss"].backward()

    rows.append(("training step (forward + backward, batch 1)", best_ms(train_step, max(3, args.repeats // 3))))
    print("| stage at 128 x 128 x 32 | ms |\n|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.1f} |")

    from monai.networks.blocks import DVF2DDF
    from voxelmorph.nn.modules import IntegrateVelocityField

    velocity = smooth_velocity(4.0)
    ours = exponentiate(velocity, 4)
    monai_layer, vxm_layer = DVF2DDF(num_steps=4), IntegrateVelocityField(steps=4)
    with torch.no_grad():
        peers = {"cvae-reg `exponentiate`": (best_ms(lambda: exponentiate(velocity, 4), args.repeats), ours),
                 "MONAI `DVF2DDF`": (best_ms(lambda: monai_layer(velocity), args.repeats), monai_layer(velocity)),
                 "VoxelMorph `IntegrateVelocityField`": (best_ms(lambda: vxm_layer(velocity), args.repeats),
                                                         vxm_layer(velocity))}
    base = peers["cvae-reg `exponentiate`"][0]
    print("\n| scaling and squaring, N = 4, max abs(v) = 4 voxels | ms | time / ours | max interior difference "
          "to ours (voxels) |\n|---|---|---|---|")
    for name, (ms, field) in peers.items():
        print(f"| {name} | {ms:.1f} | {ms / base:.2f} | {float(interior(field - ours).norm(dim=1).max()):.2e} |")

    half = exponentiate(velocity, 4, downsample=2)
    inverse_full = compose(ours, exponentiate(-velocity, 4))
    inverse_half = compose(half, exponentiate(-velocity, 4, downsample=2))
    print("\n| integration grid | ms | mean interior inverse-consistency error (voxels) |\n|---|---|---|")
    for name, ms, residual in (("full resolution (used)", base, inverse_full),
                               ("half resolution (option)", best_ms(lambda: exponentiate(velocity, 4, downsample=2),
                                                                    args.repeats), inverse_half)):
        err = float(interior(residual.norm(dim=1)).mean())
        print(f"| {name} | {ms:.1f} | {err:.3f} |")


if __name__ == "__main__":
    main()
