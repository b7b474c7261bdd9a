"""The benchmark's image-set baselines (benchmarks/baselines.py): the storage rule, herding,
k-center, Distribution Matching and prototype images learned with D3's objective."""

import math
import os

import numpy as np
import pytest
import torch

from benchmarks.baselines import (
    DistributionMatching,
    DMSettings,
    PrototypeImages,
    d3_objective_images,
    herding_images,
    herding_order,
    images_per_class,
    k_center_images,
    k_center_order,
    mean_embedding_loss,
    train_feature_network,
)
from d3hf.evaluation.image_sets import ImageSet, random_real_images
from tests.helpers import tiny_args

# ----------------------------------------------------------------------------- storage


def test_images_per_class_of_a_budget():
    assert images_per_class(7840, 10, (1, 28, 28)) == 1
    assert images_per_class(78399, 10, (1, 28, 28)) == 9
    assert images_per_class(640, 10, (1, 8, 8)) == 1


# ----------------------------------------------------------------------------- herding and k-center


def test_herding_greedily_matches_the_mean():
    features = torch.randn(60, 5, generator=torch.Generator().manual_seed(0)) * torch.tensor([3.0, 1, 1, 0.5, 2])
    order = herding_order(features, 8)
    assert len(set(order.tolist())) == 8
    target = features.mean(0)
    rng = np.random.default_rng(0)
    for t in range(1, 9):
        prefix = features[order[:t]]
        gap = (prefix.mean(0) - target).norm()
        # greedy: no other remaining row would have made this step's running mean closer
        rest = [i for i in range(60) if i not in order[: t - 1]]
        best = min(float(((prefix[:-1].sum(0) + features[i]) / t - target).norm()) for i in rest)
        assert float(gap) == pytest.approx(best, abs=1e-6)
        random_gaps = [float((features[rng.choice(60, t, replace=False)].mean(0) - target).norm()) for _ in range(50)]
        assert gap < np.mean(random_gaps)


def test_k_center_picks_the_farthest_point_each_time():
    features = torch.randn(40, 3, generator=torch.Generator().manual_seed(1))
    order = k_center_order(features, 6)
    assert len(set(order.tolist())) == 6
    assert order[0] == int((features - features.mean(0)).norm(dim=1).argmin())
    for t in range(1, 6):
        nearest = torch.cdist(features, features[order[:t]]).min(dim=1).values
        assert float(nearest[order[t]]) == pytest.approx(float(nearest.max()))


def test_k_center_covers_separated_clusters():
    centres = torch.tensor([[0.0, 0.0], [50.0, 0.0], [0.0, 50.0]])
    features = centres.repeat_interleave(10, 0) + torch.randn(30, 2, generator=torch.Generator().manual_seed(2))
    clusters = {int(i) // 10 for i in k_center_order(features, 3)}
    assert clusters == {0, 1, 2}


@pytest.fixture(scope="module")
def feature_net(digits):
    return train_feature_network(digits, epochs=2, width=16, seed=0)


@pytest.mark.parametrize("select", [herding_images, k_center_images])
def test_coresets_pick_distinct_rows_of_the_right_class(digits, feature_net, select):
    ipc = 3
    chosen = select(digits, ipc, feature_net)
    assert isinstance(chosen, ImageSet) and chosen.images.shape == (10 * ipc, 1, 8, 8)
    assert np.bincount(chosen.labels.numpy()).tolist() == [ipc] * 10
    pixels = digits.images_uint8(np.arange(len(digits.labels()))).reshape(len(digits.labels()), -1)
    picked = np.rint(chosen.images.numpy() * 255).astype(np.uint8).reshape(len(chosen.labels), -1)
    rows = [int(np.flatnonzero((pixels == p).all(1))[0]) for p in picked]
    assert len(set(rows)) == len(rows)
    np.testing.assert_array_equal(digits.labels()[rows], chosen.labels.numpy())


def test_feature_network_is_seeded(digits, feature_net):
    again = train_feature_network(digits, epochs=2, width=16, seed=0)
    for a, b in zip(feature_net.parameters(), again.parameters()):
        assert torch.equal(a, b)
    assert not any(p.requires_grad for p in again.parameters())


def test_a_kept_feature_network_is_loaded_instead_of_trained(digits, feature_net, tmp_path, monkeypatch):
    path = str(tmp_path / "nets" / "digits_seed0.pt")
    trained = train_feature_network(digits, epochs=2, width=16, seed=0, cache_path=path)
    assert os.path.exists(path) and not os.path.exists(path + ".tmp")
    from d3hf.distill import experts

    monkeypatch.setattr(experts, "train_one_expert", lambda *a, **k: pytest.fail("a kept network is trained again"))
    loaded = train_feature_network(digits, epochs=2, width=16, seed=0, cache_path=path)
    for a, b, c in zip(feature_net.parameters(), trained.parameters(), loaded.parameters()):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


# ----------------------------------------------------------------------------- distribution matching


def test_dm_starts_from_real_images_and_reduces_its_loss(digits):
    # depth 2 on 8x8 digits: at depth 3 the last instance norm sees 2x2 maps and flattens the features.
    settings = DMSettings(depth=2, width=16, batch_real=64, seed=0)
    dm = DistributionMatching(digits, 2, settings)
    start = dm.image_set()
    assert start.images.shape == (20, 1, 8, 8) and start.labels.tolist() == sorted(start.labels.tolist())
    pixels = digits.images(np.arange(len(digits.labels())))
    for image, label in zip(start.images, start.labels):
        close = (pixels - image).abs().flatten(1).amax(1) < 1e-5
        assert close.any() and int(label) in digits.labels()[close.numpy()]

    # A fixed yardstick: the same 4 random networks and real batches, no augmentation.
    nets = [dm.random_network(10_000 + i) for i in range(4)]
    real = dm.real_batches()

    def fixed_loss():
        with torch.no_grad():
            return sum(float(mean_embedding_loss(n.embed, real, dm.synthetic_batches())) for n in nets)

    before = fixed_loss()
    losses = dm.run(15)
    assert len(losses) == 15 and all(math.isfinite(v) for v in losses)
    assert fixed_loss() < 0.5 * before
    assert not torch.equal(dm.image_set().images, start.images)


def test_prototypes_learn_with_the_d3_objective_at_image_storage(digits, digits_buffer):
    from d3hf.distill.distiller import Distiller

    args = tiny_args(lr_decoder=0.01, seed=1)
    start = random_real_images(digits, 2, 0)
    model = PrototypeImages(start.images, start.labels, 2)
    history = Distiller(model, digits, digits_buffer, args.matching, seed=args.run.seed).run(40, show_progress=False)
    losses = np.array([h["loss"] for h in history])
    assert np.isfinite(losses).all() and losses[-10:].mean() < losses[:10].mean()
    assert set(history[0]) >= {"mtt", "mmd"}
    learned = model.image_set()
    assert learned.storage_scalars == 2 * 10 * 64 and torch.equal(learned.labels, start.labels)
    assert not torch.equal(learned.images, start.images)

    a = d3_objective_images(digits, 1, digits_buffer, args.replace(iterations=2))
    b = d3_objective_images(digits, 1, digits_buffer, args.replace(iterations=2))
    assert a.images.shape == (10, 1, 8, 8) and a.labels.tolist() == list(range(10))
    assert torch.equal(a.images, b.images)  # seeded by args.run.seed


def test_dm_is_seeded(digits):
    runs = []
    for _ in range(2):
        dm = DistributionMatching(digits, 1, DMSettings(width=8, batch_real=16, seed=3))
        dm.run(2)
        runs.append(dm.image_set().images)
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


def test_dm_reads_the_datas_own_decoded_copy_and_draws_the_same_batches(digits):
    """With the train split kept in memory DM holds no second copy of it, and its real batches
    are those of the per-class copy it keeps otherwise."""
    from d3hf.data.image_data import load_image_classification

    on_disk = DistributionMatching(digits, 1, DMSettings(width=8, batch_real=16, seed=3))
    in_memory_data = load_image_classification("digits")
    assert in_memory_data.keep_train_in_memory()
    in_memory = DistributionMatching(in_memory_data, 1, DMSettings(width=8, batch_real=16, seed=3))
    assert on_disk._real is not None and in_memory._real is None
    for a, b in zip(on_disk.real_batches(), in_memory.real_batches()):
        assert torch.equal(a, b)
