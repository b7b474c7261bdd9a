"""d3hf.nn.augment: DSA, each family and its parameters."""

import math

import pytest
import torch

from d3hf.nn.augment import DSA, DSAConfig, crop, named_augmentation, rotate, scale

FAMILIES = ("color", "crop", "cutout", "scale", "rotate", "flip")
ZERO_STRENGTH = DSAConfig(families=FAMILIES, brightness=0, saturation=0, contrast=0, crop=0, scale=0,
                          rotate_degrees=0, cutout=0)


def _images(n=6, c=3, hw=12, seed=0):
    return torch.randn(n, c, hw, hw, generator=torch.Generator().manual_seed(seed))


def _only(family: str, **strengths) -> DSA:
    return DSA(DSAConfig(families=(family,), **strengths))


# ----------------------------------------------------------------------------- DSA


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("shared", [True, False])
def test_dsa_keeps_shape_and_dtype_and_changes_images(family, shared):
    x = _images().double()
    out = _only(family)(x, torch.Generator().manual_seed(3), shared=shared)
    assert out.shape == x.shape and out.dtype == torch.float64
    assert not torch.allclose(out, x), f"{family} left the images unchanged"


def test_dsa_is_deterministic_for_a_seed_and_varies_across_seeds():
    x = _images()
    dsa = DSA()
    first = [dsa(x, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(first[0], first[1])
    others = [dsa(x, torch.Generator().manual_seed(s)) for s in range(8)]
    assert any(not torch.allclose(o, first[0]) for o in others)


@pytest.mark.parametrize("family", FAMILIES)
def test_dsa_is_differentiable_in_the_images(family):
    x = _images().requires_grad_(True)
    weights = _images(seed=1)
    out = _only(family)(x, torch.Generator().manual_seed(5))
    (out * weights).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_dsa_is_the_identity_when_every_strength_is_zero():
    x = _images()
    dsa = DSA(ZERO_STRENGTH)
    gen = torch.Generator().manual_seed(0)
    drawn = set()
    for _ in range(40):
        params = dsa.sample(x.shape[1:], len(x), gen, shared=False)
        if params.family == "flip":
            continue  # a flip has no strength: it is on or off
        drawn.add(params.family)
        torch.testing.assert_close(dsa.apply(x, params), x, atol=1e-5, rtol=0)
    assert drawn == set(FAMILIES) - {"flip"}


def test_flips_are_off_by_default():
    assert "flip" not in DSAConfig().families
    with pytest.raises(ValueError, match="subset"):
        DSAConfig(families=("mirror",))


def test_shared_parameters_transform_two_batches_alike():
    """Siamese use: one draw applied to batches of different sizes transforms each image alike."""
    dsa = DSA()
    a, b = _images(4), _images(9, seed=2)
    b[2] = a[1]
    gen = torch.Generator().manual_seed(11)
    drawn = set()
    for _ in range(20):
        params = dsa.sample(a.shape[1:], 1, gen, shared=True)
        drawn.add(params.family)
        torch.testing.assert_close(dsa.apply(a, params)[1], dsa.apply(b, params)[2])
    assert drawn == set(DSAConfig().families)


def test_geometric_ops_match_exact_transforms():
    x = _images(2, 1, 8)
    shifted = crop(x, torch.tensor([2]), torch.tensor([-1]))
    expected = torch.zeros_like(x)
    expected[:, :, 2:, :-1] = x[:, :, :-2, 1:]
    torch.testing.assert_close(shifted, expected)
    quarter = rotate(x, torch.tensor([math.pi / 2]))
    assert any(torch.allclose(quarter, torch.rot90(x, k, dims=(2, 3)), atol=1e-5) for k in (1, -1))
    torch.testing.assert_close(scale(x, torch.tensor([1.0]), torch.tensor([1.0])), x, atol=1e-5, rtol=0)


def test_translation_stays_within_its_strength():
    dsa = _only("crop", crop=0.25)
    gen = torch.Generator().manual_seed(0)
    shifts = torch.cat([dsa.sample((1, 8, 8), 50, gen, shared=False).values["shift_x"] for _ in range(5)])
    assert shifts.abs().max() == 2 and shifts.min() < 0 < shifts.max()


def test_a_setting_names_no_augmentation_or_dsa_and_nothing_else():
    assert named_augmentation("none") is None
    assert isinstance(named_augmentation("dsa"), DSA)
    with pytest.raises(ValueError, match="augmentation 'flip' is not available; use one of none, dsa"):
        named_augmentation("flip")
