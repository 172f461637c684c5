"""Domain randomisation (cvae.data.randomise, `--domain`): what each part does to a pair, and that a randomised run
is as reproducible as any other."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cvae.data.randomise import AcquisitionParams, _thick_slices, intensity_curve, randomise_acquisition
from cvae.training.train import train

from test_train import tiny_config, train_losses


def ramp_pair(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    fixed = torch.rand(2, 1, 24, 20, 8, generator=gen)
    return {"fixed": fixed, "moving": fixed.roll(2, dims=2), "fixed_label": (fixed * 4).long()}


def test_the_intensity_curve_interpolates_its_knots():
    image = torch.linspace(0, 1, 101).view(1, 1, 101, 1, 1)
    identity = intensity_curve(image, torch.linspace(0, 1, 5)[None])
    torch.testing.assert_close(identity, image, atol=1e-6, rtol=0)
    inverted = intensity_curve(image, torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(inverted, 1 - image, atol=1e-6, rtol=0)
    bumps = torch.tensor([[0.0, 1.0, 0.0, 1.0, 0.0]])  # at 0.125 (between knots 0 and 1): 0.5
    assert float(intensity_curve(torch.full((1, 1, 1, 1, 1), 0.125), bumps)) == pytest.approx(0.5)


@pytest.mark.parametrize("slab", [2.0, 3.0, 2.5])
def test_thick_slices_average_a_slab_and_keep_the_mean(slab):
    volume = torch.zeros(1, 1, 3, 3, 11)
    volume[..., 5] = 1.0  # one bright slice in the middle
    thick = _thick_slices(volume, slab)[0, 0, 1, 1].numpy()
    # the slab centred on slice j covers [j - slab/2, j + slab/2]: slice 5 contributes its overlap with it
    expected = [max(0.0, min(j + slab / 2, 5.5) - max(j - slab / 2, 4.5)) / slab for j in range(11)]
    np.testing.assert_allclose(thick, expected, atol=1e-6)
    assert thick.sum() == pytest.approx(1.0)
    assert torch.equal(_thick_slices(volume, 1.0), volume)


def test_randomised_pairs_stay_images_of_one_scan_and_are_seeded():
    batch = ramp_pair()
    same = {**batch, "moving": batch["fixed"].clone()}
    quiet = AcquisitionParams(noise=0.0)
    out = randomise_acquisition(same, quiet, torch.Generator().manual_seed(1))
    assert torch.equal(out["fixed"], out["moving"])  # one curve, bias, slab and blur for both frames of a pair
    assert out["fixed_label"] is batch["fixed_label"]
    again = randomise_acquisition(batch, AcquisitionParams(), torch.Generator().manual_seed(1))
    twice = randomise_acquisition(batch, AcquisitionParams(), torch.Generator().manual_seed(1))
    other = randomise_acquisition(batch, AcquisitionParams(), torch.Generator().manual_seed(2))
    assert all(torch.equal(again[k], twice[k]) for k in ("fixed", "moving"))
    assert not torch.equal(again["fixed"], other["fixed"])
    for key in ("fixed", "moving"):
        image = again[key]
        assert image.shape == batch[key].shape and image.dtype == batch[key].dtype
        assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
        # the robust range is mapped to [0, 1]: about 1 % of the voxels at 0 and 0.5 % at 1, per pair
        for pair in image:
            assert 0.002 < float((pair == 0).float().mean()) < 0.05 and float((pair == 1).float().mean()) < 0.02
    # the two pairs of the batch get their own draws
    assert not torch.allclose(again["fixed"][0].std(), again["fixed"][1].std(), rtol=1e-3)


def test_a_randomised_run_resumes_exactly(tiny_cohort, tiny_cache, tmp_path):
    settings = dict(steps=4, domain="full", kl_delay=0, kl_warmup=0, code_warmup=0, latent_dim=4)
    full = train(tiny_config(tiny_cohort, tmp_path / "full", tiny_cache, **settings), progress=False)
    plain = train(tiny_config(tiny_cohort, tmp_path / "plain", tiny_cache, **{**settings, "domain": "off"}),
                  progress=False)
    train(tiny_config(tiny_cohort, tmp_path / "cut", tiny_cache, **{**settings, "steps": 2}), progress=False)
    resumed = train(tiny_config(tiny_cohort, tmp_path / "cut", tiny_cache, resume=True, **settings), progress=False)
    a, b, c = train_losses(full), train_losses(resumed), train_losses(plain)
    assert sorted(b) == [1, 2, 3, 4]
    assert all(a[s] == pytest.approx(b[s], rel=1e-5) for s in range(1, 5))
    assert all(a[s] != pytest.approx(c[s], rel=1e-3) for s in range(1, 5))  # the randomisation changed the pairs
