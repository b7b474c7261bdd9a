"""d3hf.evaluation.image_sets: random real images and image-set files (the peer images)."""

import os

import numpy as np
import pytest
import torch

from d3hf.evaluation.image_sets import load_image_set, random_real_images
from tests.helpers import REPO

PEER_DIR = os.path.join(REPO, "..", "shared", "peer-baselines")


# ----------------------------------------------------------------------------- random real


def test_random_real_images_are_an_image_set(digits):
    images, labels = random_real_images(digits, 2, seed=1)
    assert images.shape == (20, 1, 8, 8) and np.bincount(labels.numpy()).tolist() == [2] * 10
    assert random_real_images(digits, 2, seed=1).storage_scalars == 20 * 64
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0


# ----------------------------------------------------------------------------- peer images


@pytest.mark.skipif(not os.path.isdir(PEER_DIR), reason="shared/peer-baselines is not beside the repository")
@pytest.mark.parametrize("ipc", [1, 10])
def test_peer_dm_images_load_in_unclipped_pixel_scale(ipc):
    images, labels = peer = load_image_set(os.path.join(PEER_DIR, f"dm_mnist5k_ipc{ipc}.npz"))
    assert images.shape == (10 * ipc, 1, 28, 28) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert np.bincount(labels.numpy()).tolist() == [ipc] * 10
    assert peer.storage_scalars == 7840 * ipc
    assert float(images.min()) < 0.0 or float(images.max()) > 1.0  # DM pixels are free, not clipped
    assert -5.0 < float(images.min()) and float(images.max()) < 5.0  # but in pixel scale, not normalised


def test_peer_loader_round_trip_and_errors(tmp_path):
    images = np.random.default_rng(0).normal(0.5, 1.0, (4, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "ok.npz", images=images, labels=np.array([0, 0, 1, 1]))
    loaded = load_image_set(str(tmp_path / "ok.npz"))
    np.testing.assert_array_equal(loaded.images.numpy(), images)
    assert loaded.labels.tolist() == [0, 0, 1, 1]
    np.savez(tmp_path / "bad.npz", images=images[:, 0], labels=np.array([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="expected images"):
        load_image_set(str(tmp_path / "bad.npz"))
    with pytest.raises(ValueError, match="does not exist"):
        load_image_set(str(tmp_path / "missing.npz"))
