"""Evaluation protocols, DSA augmentation, random real images, image-set files and the overlap refusal."""

import math
import os
from dataclasses import replace

import numpy as np
import pytest
import torch

from d3hf.data.provenance import SplitOverlapError, check_test_split_disjoint, train_rows_record
from d3hf.evaluation import training as evaluation
from d3hf.evaluation.image_sets import load_image_set, random_real_images
from d3hf.evaluation.protocols import Protocol, named_protocol, named_protocols
from d3hf.evaluation.training import evaluate, fixed_source, train_and_test, train_network
from d3hf.nn.augment import DSA, DSAConfig, crop, rotate, scale
from d3hf.nn.networks import build_classifier
from d3hf.utils.environment import measured_on, measured_where

PEER_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "peer-baselines")
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


# ----------------------------------------------------------------------------- protocols and networks


def test_named_protocols():
    protocols = named_protocols()
    assert set(protocols) == {"P-noaug", "P-dsa"}
    assert protocols["P-noaug"] == Protocol()  # the headline protocol keeps its defaults
    assert protocols["P-dsa"].epochs == 1000 and protocols["P-dsa"].augment == "dsa"
    assert named_protocol("P-noaug", arch="resnet").name == "P-noaug"
    assert named_protocol("P-dsa", epochs=2).name == "P-dsa[epochs=2]"
    assert "DSA" in protocols["P-dsa"].describe()
    text = protocols["P-noaug"].describe()  # every choice the headline number depends on
    for choice in ("convnet-3 width 128, instance norm", "SGD lr 0.01 momentum 0.9 wd 0.0005", "batch 256",
                   "lr x0.1 at epoch 150", "300 epochs", "20 fresh samples per class per epoch",
                   "augmentation none", "final-epoch"):
        assert choice in text
    with pytest.raises(ValueError, match="unknown protocol"):
        named_protocol("P-best")


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8), (3, 32, 32)])
def test_resnet_classifies_any_image_size(shape):
    net = build_classifier("resnet", shape, 10, depth=3, width=16)
    logits = net(torch.randn(2, *shape))
    assert logits.shape == (2, 10)
    # The prediction depends on the image: no block normalises a 1x1 map down to its bias.
    assert (logits[0] - logits[1]).abs().max() > 1e-3
    assert any(type(m).__name__ == "ResidualBlock" for m in net.modules())
    with pytest.raises(ValueError, match="resnet"):
        build_classifier("vgg", shape, 10)


@pytest.mark.parametrize("arch", ["convnet", "resnet"])
def test_p_dsa_trains_and_tests_for_one_epoch(digits, arch):
    images = random_real_images(digits, 3, seed=0)
    protocol = named_protocol("P-dsa", epochs=1, width=16, arch=arch)
    accuracies = [train_and_test(fixed_source(*images), digits, protocol, seed=4) for _ in range(2)]
    assert 0.0 <= accuracies[0] <= 1.0 and accuracies[0] == accuracies[1]


def test_p_dsa_augments_the_training_batches(digits, monkeypatch):
    seen = []
    original = DSA.__call__

    def spy(self, x, generator, shared=False):
        out = original(self, x, generator, shared)
        seen.append(bool((out != x).any()))
        return out

    monkeypatch.setattr(DSA, "__call__", spy)
    images = random_real_images(digits, 2, seed=0)
    train_and_test(fixed_source(*images), digits, named_protocol("P-dsa", epochs=3, width=8), seed=0)
    assert len(seen) == 3 and any(seen)
    seen.clear()
    train_and_test(fixed_source(*images), digits, named_protocol("P-noaug", epochs=3, width=8), seed=0)
    assert seen == []
    with pytest.raises(ValueError, match="augmentation"):
        train_and_test(fixed_source(*images), digits, Protocol(epochs=1, width=8, augment="mixup"), seed=0)


def test_an_interrupted_downstream_training_resumes_to_the_same_network(digits, tmp_path, caplog):
    real_images, labels = random_real_images(digits, 3, seed=0)

    def jittered(epoch):  # a source drawing from torch's global generator, as a user's may
        return real_images + 0.05 * torch.randn_like(real_images), labels

    # DSA, several batches per epoch, the lr step at epoch 2 after the resume and a source that
    # draws from the global generator: every random stream and the schedule have to be restored
    # for the resumed network to match.
    protocol = replace(named_protocol("P-dsa", epochs=4, width=8), batch_size=8)
    reference = train_network(jittered, digits, protocol, seed=1)
    checkpoint = str(tmp_path / "eval-seed1.pt")

    class Interrupted(Exception):
        pass

    def interrupted_at_epoch_1(epoch):
        if epoch == 1:
            raise Interrupted
        return jittered(epoch)

    with pytest.raises(Interrupted):
        train_network(interrupted_at_epoch_1, digits, protocol, seed=1, checkpoint=checkpoint, checkpoint_seconds=0)
    epochs_run = []

    def counting(epoch):
        epochs_run.append(epoch)
        return jittered(epoch)

    resumed = train_network(counting, digits, protocol, seed=1, checkpoint=checkpoint, checkpoint_seconds=0)
    assert epochs_run == [1, 2, 3] and not os.path.exists(checkpoint)
    assert resumed.resumed_from_epoch == 1 and resumed.seconds > resumed.seconds_before_resume > 0
    assert reference.resumed_from_epoch == 0 and reference.seconds_before_resume == 0
    for name, value in reference.net.state_dict().items():
        assert torch.equal(value, resumed.net.state_dict()[name]), name
    # A checkpoint of another seed, or a damaged one, is not resumed from: training starts over.
    with pytest.raises(Interrupted):
        train_network(interrupted_at_epoch_1, digits, protocol, seed=2, checkpoint=checkpoint, checkpoint_seconds=0)
    epochs_run.clear()
    train_network(counting, digits, protocol, seed=1, checkpoint=checkpoint)
    assert epochs_run == [0, 1, 2, 3] and "another protocol or seed" in caplog.text
    with open(checkpoint, "wb") as f:
        f.write(b"not a checkpoint")
    epochs_run.clear()
    assert train_and_test(counting, digits, protocol, seed=1, checkpoint=checkpoint) == \
        train_and_test(jittered, digits, protocol, seed=1)
    assert epochs_run == [0, 1, 2, 3] and "not a d3hf checked file" in caplog.text



def test_a_result_resumed_from_another_machines_checkpoint_names_both(digits, tmp_path, monkeypatch):
    images = random_real_images(digits, 1, seed=0)
    protocol = named_protocol("P-noaug", epochs=3, width=8)
    other = {**measured_on("cpu"), "device_name": "Another CPU"}
    monkeypatch.setattr(evaluation, "CHECKPOINT_SECONDS", 0)  # a checkpoint after every epoch

    def interrupted_at_epoch_1(epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return images

    with monkeypatch.context() as patch:  # the first run, on "another" machine, is killed
        patch.setattr(evaluation, "measured_on", lambda device: other)
        with pytest.raises(KeyboardInterrupt):
            evaluate(lambda s: interrupted_at_epoch_1, digits, protocol, checkpoint_dir=str(tmp_path))
    result = evaluate(lambda s: fixed_source(*images), digits, protocol, checkpoint_dir=str(tmp_path))
    assert result["resumed_from_epochs"] == [1] and result["measured_on"] == measured_on("cpu")
    assert result["checkpointed_on"] == [other]
    assert measured_where(result).endswith("; resumed from training on Another CPU (cpu), torch "
                                           f"{torch.__version__}, {torch.get_num_threads()} thread"
                                           + ("s" if torch.get_num_threads() != 1 else ""))
    # Resumed on the machine that made the checkpoint: one machine, nothing else to name.
    with pytest.raises(KeyboardInterrupt):
        evaluate(lambda s: interrupted_at_epoch_1, digits, protocol, checkpoint_dir=str(tmp_path))
    result = evaluate(lambda s: fixed_source(*images), digits, protocol, checkpoint_dir=str(tmp_path))
    assert result["resumed_from_epochs"] == [1] and "checkpointed_on" not in result

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


# ----------------------------------------------------------------------------- overlap refusal


def _with_test(data, test):
    return replace(data, test=test, _test_labels=None)


def test_disjoint_test_split_is_accepted(digits):
    verdict = check_test_split_disjoint(train_rows_record(digits), digits)
    assert "verified disjoint" in verdict and "1437" in verdict


def test_test_split_overlapping_the_distillation_rows_is_refused(digits):
    import datasets

    leaky = _with_test(digits, datasets.concatenate_datasets([digits.test, digits.train.select(range(7))]))
    with pytest.raises(SplitOverlapError, match="7 of the 367 test rows"):
        check_test_split_disjoint(train_rows_record(digits), leaky)


def test_overlap_by_pixels_without_source_row(digits):
    import datasets

    train = digits.train.remove_columns("source_row")
    plain = replace(digits, train=train, test=digits.test.remove_columns("source_row"), _test_labels=None)
    record = train_rows_record(plain)
    assert record["train_rows_key"] == "image_sha1"
    assert "pixel hashes" in check_test_split_disjoint(record, plain)
    leaky = _with_test(plain, datasets.concatenate_datasets([plain.test, train.select([3, 9])]))
    with pytest.raises(SplitOverlapError, match="identical"):
        check_test_split_disjoint(record, leaky)


def test_unidentifiable_distillation_rows_are_refused_unless_allowed(digits):
    record = train_rows_record(digits.subset(range(5)))  # distilled from other rows than digits' train split
    with pytest.raises(SplitOverlapError, match="Cannot verify"):
        check_test_split_disjoint(record, digits)
    assert "NOT verified" in check_test_split_disjoint(record, digits, allow_unverified=True)


def test_artifact_source_without_row_digest_uses_the_fingerprint(digits):
    from conftest import tiny_args

    from d3hf.distill.runner import build_config

    source = build_config(tiny_args(), digits).source
    assert source["train_rows_key"] == "source_row"  # new artifacts record their rows
    assert "verified disjoint" in check_test_split_disjoint(source, digits)
    source = {k: v for k, v in source.items() if k not in ("train_rows_key", "train_rows_digest")}  # older ones
    assert "verified disjoint" in check_test_split_disjoint(source, digits)
    with pytest.raises(SplitOverlapError):
        check_test_split_disjoint({**source, "train_fingerprint": "0" * 16}, digits)


@pytest.mark.slow
def test_peer_images_split_is_mnist5k_and_disjoint_from_its_test_split():
    import datasets

    from d3hf import load_image_classification
    from d3hf.evaluation.image_sets import peer_mnist5k_source

    mnist = load_image_classification("mnist5k")
    source = peer_mnist5k_source()
    assert source["num_train_rows"] == 4000
    assert "4000 distillation rows" in check_test_split_disjoint(source, mnist)
    leaky = _with_test(mnist, datasets.concatenate_datasets([mnist.test, mnist.train.select([0])]))
    with pytest.raises(SplitOverlapError):
        check_test_split_disjoint(source, leaky)
