"""The D3 artifact: sampling, determinism, saving/loading, datasets views, model card."""

import numpy as np
import pytest
import torch
import yaml
from PIL import Image as PILImage

import d3hf  # noqa: F401  (registers the "d3" model type with transformers' Auto classes)
from d3hf import D3Model, family_spec, load_distilled
from d3hf.hub.cards import sample_grid, save_artifact
from tests.helpers import CLASS_NAMES, make_model, tiny_config


@pytest.fixture(scope="module")
def model():
    return make_model()


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("artifact")
    save_artifact(model, str(path))
    return path


# ----------------------------------------------------------------------------- sampling


def test_sample_shapes_range_and_labels(model):
    images, labels = model.sample(3, seed=1)
    assert tuple(images.shape) == (30, 1, 8, 8)
    assert images.dtype == torch.float32
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    assert labels.tolist() == [c for c in range(10) for _ in range(3)]


def test_same_seed_same_samples_other_seed_other_samples(model):
    a, _ = model.sample(2, seed=5)
    b, _ = model.sample(2, seed=5)
    c, _ = model.sample(2, seed=6)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3


def test_class_samples_do_not_depend_on_other_classes_requested(model):
    full, labels = model.sample(4, seed=3)
    only, only_labels = model.sample(4, seed=3, classes=[2])
    assert only_labels.tolist() == [2] * 4
    assert torch.equal(only, full[labels == 2])
    pair, _ = model.sample(4, seed=3, classes=[7, 2])
    assert torch.equal(pair[4:], full[labels == 2])


def test_generation_does_not_depend_on_batch_composition(model):
    prior_ids, noise = model.draw(5, seed=0)
    with torch.no_grad():
        latents = model.reparameterize(prior_ids, noise)
        together = model.decode(latents, prior_ids)
        alone = torch.cat([model.decode(latents[i : i + 1], prior_ids[i : i + 1]) for i in range(len(prior_ids))])
    torch.testing.assert_close(alone, together, atol=1e-6, rtol=0)
    chunked, _ = model.sample(5, seed=0, batch_size=3)
    torch.testing.assert_close(chunked, together, atol=1e-6, rtol=0)


def test_samples_spread_over_priors_and_noise_matters(model):
    prior_ids, noise = model.draw(4, seed=0, classes=[1])
    assert prior_ids.tolist() == [2, 3, 2, 3]  # lpc 2: class 1 owns priors 2 and 3
    images, _ = model.sample(4, seed=0, classes=[1])
    assert (images[0] - images[2]).abs().max() > 1e-4  # same prior, fresh noise


@pytest.mark.parametrize("num_per_class", [2, 7])  # fewer samples than the 5 priors; 1 each and 2 more
def test_every_prior_is_drawn_equally_often_over_seeds(num_per_class):
    model = make_model(priors_per_class=5)
    ids = [model.draw(num_per_class, seed=s, classes=[3])[0] for s in range(200)]
    for i in ids:  # class 3 owns priors 15-19; within a draw no prior has two samples more than another
        counts = torch.bincount(i - 15, minlength=5)
        assert set(i.tolist()) <= set(range(15, 20)) and counts.max() - counts.min() <= 1
    totals = torch.bincount(torch.cat(ids) - 15, minlength=5).float()
    assert (totals / totals.mean() - 1).abs().max() < 0.15  # not the first priors more often
    assert torch.equal(ids[7], model.draw(num_per_class, seed=7, classes=[3])[0])


def test_mean_images(model):
    images, labels = model.mean_images()
    assert tuple(images.shape) == (20, 1, 8, 8)
    assert labels.tolist() == [c for c in range(10) for _ in range(2)]
    with torch.no_grad():
        expected = model.decode(model.prior_means, torch.arange(20))
    torch.testing.assert_close(images, expected)


def test_invalid_class_is_refused(model):
    with pytest.raises(ValueError, match="out of range"):
        model.sample(1, classes=[10])


# ----------------------------------------------------------------------------- save / load


def _assert_same_model(a: D3Model, b: D3Model):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    for field in ("class_names", "image_shape", "z_dim", "priors_per_class", "decoders", "subtasks",
                  "normalization_mean", "normalization_std", "soft_labels", "source", "distillation"):
        assert getattr(a.config, field) == getattr(b.config, field), field


@pytest.mark.parametrize("loader", ["D3Model", "AutoModel"])
def test_save_and_load_round_trip(model, saved, loader):
    from transformers import AutoModel

    cls = D3Model if loader == "D3Model" else AutoModel
    loaded = cls.from_pretrained(str(saved))
    assert type(loaded) is D3Model
    _assert_same_model(model, loaded)
    torch.testing.assert_close(loaded.sample(2, seed=9)[0], model.sample(2, seed=9)[0], atol=0, rtol=0)


def test_save_and_load_round_trip_with_soft_labels_and_subtasks(tmp_path):
    spec = family_spec([1, 8, 8], 4, 4).to_dict()
    m = make_model(soft_labels=True, subtasks=[[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]], decoders=[spec, spec])
    with torch.no_grad():
        m.soft_labels.copy_(torch.rand_like(m.soft_labels).softmax(-1))
    m.save_pretrained(str(tmp_path))
    loaded = D3Model.from_pretrained(str(tmp_path))
    _assert_same_model(m, loaded)
    _, _, soft = loaded.sample(2, seed=0, soft_labels=True)
    assert tuple(soft.shape) == (20, 10)
    torch.testing.assert_close(soft[0], m.soft_labels[0])


def test_a_process_that_is_not_rank_0_saves_the_model_it_holds(tmp_path, monkeypatch):
    import transformers.distributed.mixin as mixin

    monkeypatch.setattr(mixin, "_is_torch_distributed_initialized", lambda: True)
    monkeypatch.setattr(mixin, "_get_torch_distributed_rank", lambda: 1)  # as on rank 1 of a process group
    m = make_model()
    save_artifact(m, str(tmp_path / "a"))
    _assert_same_model(m, D3Model.from_pretrained(str(tmp_path / "a")))
    m.save_pretrained(str(tmp_path / "b"))  # a plain save keeps transformers' rule: rank 0 writes
    assert not (tmp_path / "b" / "model.safetensors").exists()


def test_model_card_header_and_sample_grid(model, saved):
    text = (saved / "README.md").read_text()
    assert text.startswith("---\n")
    header = yaml.safe_load(text.split("---\n")[1])
    assert header["library_name"] == "d3hf"
    assert {"dataset-distillation", "d3"} <= set(header["tags"])
    assert "Storage" in text and f"{model.storage().total_scalars:,}" in text

    with PILImage.open(saved / "samples.png") as grid:
        grid.load()
        png = np.asarray(grid)
    np.testing.assert_array_equal(png, np.asarray(sample_grid(model)))  # seed-0 samples, one row per class
    three = make_model(class_names=["a", "b", "c"])
    small = np.asarray(sample_grid(three))
    assert png.shape[1] == small.shape[1]  # same samples per row
    assert abs(png.shape[0] / 10 - small.shape[0] / 3) <= 1.0  # height proportional to the number of classes


def test_model_card_does_not_list_local_paths_as_hub_datasets(tmp_path):
    from d3hf.hub.cards import card_text

    local = str(tmp_path / "my" / "data")
    text = card_text(make_model(source={"source": local}))
    header = yaml.safe_load(text.split("---\n")[1])
    assert local not in (header.get("datasets") or [])


# ----------------------------------------------------------------------------- datasets views


def test_to_dataset_features_and_pixels(model):
    import datasets

    ds = load_distilled(model, 3, seed=4)
    assert isinstance(ds.features["image"], datasets.Image)
    assert isinstance(ds.features["label"], datasets.ClassLabel)
    assert ds.features["label"].names == CLASS_NAMES
    images, labels = model.sample(3, seed=4)
    assert ds["label"] == labels.tolist()
    expected = torch.round(255 * images).to(torch.uint8)[:, 0].numpy()
    decoded = np.stack([np.asarray(im) for im in ds["image"]])
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, expected)


def _examples(iterable):
    return [(ex["label"], np.asarray(ex["image"]).tobytes()) for ex in iterable]


def test_iterable_dataset_epochs(model):
    it = load_distilled(model, 4, seed=0, streaming=True)
    epoch0 = _examples(it)
    assert len(epoch0) == 40
    assert sorted(label for label, _ in epoch0) == sorted(list(range(10)) * 4)
    assert _examples(it) == epoch0  # the same epoch replays the same examples
    it.set_epoch(1)
    epoch1 = _examples(it)
    assert sorted(label for label, _ in epoch1) == sorted(label for label, _ in epoch0)
    assert len({img for _, img in epoch1} & {img for _, img in epoch0}) == 0
    it.set_epoch(0)
    assert _examples(it) == epoch0


def test_iterable_dataset_with_dataloader_workers(model):
    from torch.utils.data import DataLoader

    it = load_distilled(model, 4, seed=0, streaming=True)
    direct = _examples(it)
    via_workers = _examples(DataLoader(it, batch_size=None, num_workers=2))
    assert len(via_workers) == len(direct) == 40
    assert {label for label, _ in via_workers} == {label for label, _ in direct} == set(range(10))
    assert sorted(label for label, _ in via_workers) == sorted(label for label, _ in direct)


@pytest.mark.parametrize("epoch", [0, 2])
def test_dataloader_workers_yield_the_same_examples_as_direct_iteration(model, epoch):
    from torch.utils.data import DataLoader

    it = load_distilled(model, 4, seed=0, streaming=True)
    it.set_epoch(epoch)
    direct = _examples(it)
    via_workers = _examples(DataLoader(it, batch_size=None, num_workers=2))
    assert sorted(via_workers) == sorted(direct)  # workers split the epoch: nothing lost, nothing repeated


# ----------------------------------------------------------------------------- subtasks


def test_each_class_is_decoded_by_its_subtask_decoder():
    spec = family_spec([1, 8, 8], 4, 4).to_dict()
    m = make_model(subtasks=[[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]], decoders=[spec, spec])
    assert m.prior_decoders.tolist() == [0] * 10 + [1] * 10
    seven, _ = m.sample(3, seed=0, classes=[7])
    two, _ = m.sample(3, seed=0, classes=[2])
    with torch.no_grad():
        for p in m.decoders[0].parameters():
            p.zero_()
    assert torch.equal(m.sample(3, seed=0, classes=[7])[0], seven)
    assert not torch.allclose(m.sample(3, seed=0, classes=[2])[0], two)
    both, labels = m.sample(3, seed=0, classes=[2, 7])
    assert torch.equal(both[labels == 7], seven)
    torch.testing.assert_close(both[labels == 2], torch.full_like(both[labels == 2], 0.5))  # sigmoid(0)


def test_config_validation_rejects_inconsistent_subtasks():
    with pytest.raises(ValueError, match="every class"):
        D3Model(tiny_config(subtasks=[[0, 1, 2], [3, 4]], decoders=None))
