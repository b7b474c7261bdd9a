"""d3hf.hub.cards: the model card's metadata as the Hub renders it."""


import pytest
import torch

from d3hf import D3Config, D3Model, family_spec


def tiny_model(**source) -> D3Model:
    """A digits-shaped untrained artifact: 10 classes of 1x8x8, z 4, a width-4 decoder."""
    torch.manual_seed(0)
    config = D3Config(
        class_names=[str(i) for i in range(10)], image_shape=[1, 8, 8], z_dim=4, priors_per_class=2,
        decoders=[family_spec([1, 8, 8], 4, 4).to_dict()], normalization_mean=[0.3], normalization_std=[0.37],
        source={"source": "digits", "split_rule": "test rule", **source},
        distillation={"dataset": "digits", "ipc_budget": 2, "seed": 0},
    )
    return D3Model(config).eval()


# ----------------------------------------------------------------------------- model card


def card(source: str):
    from huggingface_hub import ModelCard

    from d3hf.hub.cards import card_text

    return ModelCard(card_text(tiny_model(source=source)))


@pytest.mark.parametrize("source, license_id, datasets", [
    ("mnist5k", "mit", ["ylecun/mnist"]),
    ("fashion_mnist", "mit", ["zalando-datasets/fashion_mnist"]),
    ("digits", "cc-by-4.0", None),  # scikit-learn's copy of the UCI digits: no canonical Hub id
    ("someone/their-images", "unknown", ["someone/their-images"]),
])
def test_model_card_metadata_the_hub_renders(source, license_id, datasets):
    c = card(source)
    assert c.data.license == license_id
    assert c.data.datasets == datasets
    assert {"dataset-distillation", "d3", "d3hf", "synthetic-data", "image-classification"} <= set(c.data.tags)
    assert c.data.library_name == "d3hf"
    assert "pypi.org" not in c.content


def test_model_card_of_a_local_folder_has_no_dataset_and_an_unknown_license(tmp_path):
    c = card(str(tmp_path))
    assert c.data.license == "unknown" and not c.data.datasets
