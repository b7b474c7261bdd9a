"""d3hf.evaluation.training and protocols: networks, named protocols, resumable training."""

import os
import re
from dataclasses import replace

import pytest
import torch

from d3hf.evaluation import training as evaluation
from d3hf.evaluation.image_sets import random_real_images
from d3hf.evaluation.protocols import Protocol, named_protocol, named_protocols
from d3hf.evaluation.training import evaluate, fixed_source, train_and_test, train_network
from d3hf.nn.augment import DSA
from d3hf.nn.networks import build_classifier
from d3hf.utils.environment import measured_on, measured_where
from tests.helpers import make_model

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


def test_a_protocols_name_is_read_back_into_the_same_protocol():
    changed = named_protocol("P-dsa", epochs=10, num_per_class=50, lr=0.05, arch="resnet")
    assert changed.name == "P-dsa[epochs=10,lr=0.05,num_per_class=50]"
    assert named_protocol(changed.name, arch="resnet") == changed
    assert named_protocol("P-noaug[num_per_class=50]", num_per_class=20).name == "P-noaug"  # overrides last
    for bad, match in (("P-best[epochs=1]", "unknown protocol"), ("P-noaug[epochs=1", "unknown protocol"),
                       ("P-noaug[epochs=many]", "epochs needs a int"), ("P-noaug[depht=4]", "not FIELD=VALUE"),
                       ("P-noaug[name=P-dsa]", "not FIELD=VALUE"), ("P-noaug[epochs=]", "not FIELD=VALUE")):
        with pytest.raises(ValueError, match=re.escape(match)):
            named_protocol(bad)


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


class Interrupted(Exception):
    """A training killed mid-run."""


def interrupted_at(epoch: int, source):
    """``source``, but the run dies as epoch ``epoch`` starts."""
    def interrupted(e):
        if e == epoch:
            raise Interrupted
        return source(e)
    return interrupted


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
    interrupted_at_epoch_1 = interrupted_at(1, jittered)
    with pytest.raises(Interrupted):
        train_network(interrupted_at_epoch_1, digits, protocol, seed=1, checkpoint=checkpoint, checkpoint_seconds=0)
    epochs_run = []

    def counting(epoch):
        epochs_run.append(epoch)
        return jittered(epoch)

    resumed = train_network(counting, digits, protocol, seed=1, checkpoint=checkpoint, checkpoint_seconds=0)
    assert epochs_run == [1, 2, 3] and os.path.exists(checkpoint)
    assert resumed.resumed_from_epoch == 1 and resumed.seconds > resumed.seconds_before_resume > 0
    assert reference.resumed_from_epoch == 0 and reference.seconds_before_resume == 0
    for name, value in reference.net.state_dict().items():
        assert torch.equal(value, resumed.net.state_dict()[name]), name
    # The finished state is kept until the caller has its result: stopped after the last epoch
    # (say while testing), a run trains nothing again and gives the same network.
    epochs_run.clear()
    finished = train_network(counting, digits, protocol, seed=1, checkpoint=checkpoint)
    assert epochs_run == [] and finished.resumed_from_epoch == protocol.epochs
    for name, value in reference.net.state_dict().items():
        assert torch.equal(value, finished.net.state_dict()[name]), name
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


def test_a_test_curve_ends_at_the_final_accuracy_and_survives_a_resume(digits, tmp_path):
    images = random_real_images(digits, 3, seed=0)
    protocol = replace(named_protocol("P-noaug", epochs=5, width=8), batch_size=8)
    plain = train_network(fixed_source(*images), digits, protocol, seed=3)
    assert plain.test_curve == []
    traced = evaluate(lambda s: fixed_source(*images), digits, protocol, test_every=2)
    assert [e for e, _ in traced["test_curves"][0]] == [2, 4, 5]  # and after the last epoch
    assert traced["test_curves"][0][-1][1] == traced["accuracies"][0]
    # Testing along the way leaves the training as it was: the same final network.
    curved = train_network(fixed_source(*images), digits, protocol, seed=3, test_every=2)
    for name, value in plain.net.state_dict().items():
        assert torch.equal(value, curved.net.state_dict()[name]), name
    # The curve's last point is the trained network's own test (evaluate reports it, not testing twice).
    assert curved.test_curve[-1] == (5, evaluation.test_accuracy(curved.net, digits, *digits.normalization_tensors("cpu"),
                                                                "cpu"))
    checkpoint = str(tmp_path / "eval-seed3.pt")
    with pytest.raises(Interrupted):
        train_network(interrupted_at(3, fixed_source(*images)), digits, protocol, seed=3, checkpoint=checkpoint,
                      checkpoint_seconds=0, test_every=2)
    resumed = train_network(fixed_source(*images), digits, protocol, seed=3, checkpoint=checkpoint, test_every=2)
    assert resumed.resumed_from_epoch == 3 and resumed.test_curve == curved.test_curve
    with pytest.raises(ValueError, match="test_every"):
        train_network(fixed_source(*images), digits, protocol, seed=3, test_every=0)


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
    os.remove(tmp_path / "eval-seed0.pt")  # as a caller does once it has kept the result
    with pytest.raises(KeyboardInterrupt):
        evaluate(lambda s: interrupted_at_epoch_1, digits, protocol, checkpoint_dir=str(tmp_path))
    result = evaluate(lambda s: fixed_source(*images), digits, protocol, checkpoint_dir=str(tmp_path))
    assert result["resumed_from_epochs"] == [1] and "checkpointed_on" not in result


# ----------------------------------------------------------------------------- evaluation notes


ARTIFACT_NOTES = ("P-noaug[epochs=1,num_per_class=2]: convnet-3 width 8, instance norm, SGD lr 0.01 momentum 0.9 "
                  "wd 0.0005, batch 256, lr x0.1 at epoch 0, 1 epochs, 2 fresh samples per class per epoch from a "
                  "distributional artifact, augmentation none, final-epoch accuracy")


def test_evaluation_notes_say_what_was_trained_on(digits):
    from d3hf.evaluation.image_sets import random_real_images
    from d3hf.evaluation.protocols import named_protocol
    from d3hf.evaluation.training import evaluate, fixed_source, model_source

    protocol = named_protocol("P-noaug", width=8, epochs=1, num_per_class=2)
    real = evaluate(lambda s: fixed_source(*random_real_images(digits, 3, s)), digits, protocol)
    assert "a fixed image set, the same images every epoch" in real["notes"]
    assert "fresh samples" not in real["notes"] and "artifact" not in real["notes"]
    model = make_model()
    d3 = evaluate(lambda s: model_source(model, protocol.num_per_class, s), digits, protocol)
    assert d3["notes"] == protocol.describe() == ARTIFACT_NOTES  # as every artifact row read before
