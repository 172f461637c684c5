"""Draws docs/overview.png (the README's picture): one synthetic test subject registered ED -> ES.

    .venv/bin/python docs/make_overview.py [--checkpoint synthetic-acdc] [--subject 0]

Panels: moving (ED), fixed (ES), warped ED, the deformation grid on the warped image, the Jacobian determinant.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import cvae  # noqa: E402
from cvae.data.dataset import PairDataset  # noqa: E402
from cvae.paths import data_root  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="synthetic-acdc")
    parser.add_argument("--subject", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).with_name("overview.png")))
    args = parser.parse_args()
    model = cvae.load_model(args.checkpoint, "cpu")
    item = PairDataset(data_root(), "testing")[args.subject]
    with torch.no_grad():
        r = model.register(item["fixed"][None], item["moving"][None], inverse=False)
    z = item["fixed"].shape[-1] // 2
    fixed, moving = item["fixed"][0, :, :, z].numpy(), item["moving"][0, :, :, z].numpy()
    warped = r.warped[0, 0, :, :, z].numpy()
    u = r.displacement[0, :, :, :, z].numpy()
    jac = r.jacobian[0, :, :, z].numpy()
    crop = (slice(24, 104), slice(24, 104))

    fig, axes = plt.subplots(1, 5, figsize=(13, 3), dpi=80)
    for ax, image, title in zip(axes, (moving, fixed, warped), ("moving: ED", "fixed: ES", "warped ED ~ ES")):
        ax.imshow(image[crop].T, cmap="gray", origin="lower", vmin=0, vmax=1)
        ax.set_title(title)
    ax = axes[3]
    ax.imshow(warped[crop].T, cmap="gray", origin="lower", vmin=0, vmax=1)
    xs, ys = np.meshgrid(np.arange(crop[0].start, crop[0].stop), np.arange(crop[1].start, crop[1].stop),
                         indexing="ij")
    px, py = xs + u[0][crop] - crop[0].start, ys + u[1][crop] - crop[1].start
    for k in range(0, px.shape[0], 4):
        ax.plot(px[k, :], py[k, :], color="orange", lw=0.6)
    for k in range(0, px.shape[1], 4):
        ax.plot(px[:, k], py[:, k], color="orange", lw=0.6)
    ax.set_title("deformation phi = exp(v)")
    im = axes[4].imshow(jac[crop].T, cmap="RdBu_r", origin="lower", vmin=0, vmax=2)
    axes[4].set_title(f"det Jacobian (min {jac.min():.2f})")
    fig.colorbar(im, ax=axes[4], fraction=0.046)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
