"""Untrusted artifacts: tampered, truncated or code-carrying artifacts fail clearly and run nothing."""

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel

from d3hf import D3Config, D3Model
from d3hf.commands.cli import main
from d3hf.modeling.validation import ArtifactError


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    path = tmp_path_factory.mktemp("artifact") / "ok"
    config = D3Config(class_names=list("abc"), image_shape=[1, 8, 8], z_dim=4, priors_per_class=2, soft_labels=True)
    D3Model(config).save_pretrained(str(path))
    return path


def tampered(artifact, tmp_path, edit_weights=None, edit_config=None):
    path = tmp_path / "tampered"
    shutil.copytree(artifact, path)
    if edit_weights:
        weights = load_file(str(path / "model.safetensors"))
        edit_weights(weights)
        save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    if edit_config:
        config = json.loads((path / "config.json").read_text())
        edit_config(config)
        (path / "config.json").write_text(json.dumps(config))
    return str(path)


def truncate(path):
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])


CASES = {
    "shape mismatch": (lambda w: w.update(prior_means=torch.zeros(5, 4)), None,
                       "prior_means has shape [5, 4], the config implies [6, 4]"),
    "NaN": (lambda w: w["prior_logvars"].__setitem__((0, 0), float("nan")), None, "prior_logvars holds 1 non-finite"),
    "inf": (lambda w: w["decoders.0.stem.weight"].__setitem__((0, 0), float("inf")), None, "non-finite"),
    "missing tensor": (lambda w: w.pop("prior_logvars"), None, "missing tensors ['prior_logvars']"),
    "extra tensor": (lambda w: w.update(payload=torch.zeros(3)), None, "unexpected ['payload']"),
    "integer tensor": (lambda w: w.update(prior_means=w["prior_means"].to(torch.int32)), None, "is I32"),
    "soft labels not probabilities": (lambda w: w["soft_labels"].mul_(3), None, "probability vectors"),
    "class id out of range": (None, lambda c: c.update(subtasks=[[0, 1, 7]]), "every class id 0..2 exactly once"),
    "decoder of another shape": (None, lambda c: c["decoders"][0].update(out_shape=[3, 8, 8]),
                                 "every decoder must take z_dim latents and produce image_shape"),
    "absurd image shape": (None, lambda c: c.update(image_shape=[1, 100000, 8]), "larger than 4096"),
    "negative channels": (None, lambda c: c["decoders"][0].update(channels=[-4, 2]), "positive"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_tampered_artifact_gives_one_clear_error(artifact, tmp_path, case):
    edit_weights, edit_config, message = CASES[case]
    path = tampered(artifact, tmp_path, edit_weights, edit_config)
    for loader in (D3Model, AutoModel):
        with pytest.raises(ArtifactError) as err:
            loader.from_pretrained(path)
        assert message in str(err.value), (loader, str(err.value))


def test_config_field_of_the_wrong_type(artifact, tmp_path):
    path = tampered(artifact, tmp_path, edit_config=lambda c: c.update(z_dim="four"))
    with pytest.raises(ArtifactError, match=r"unreadable config.json \(D3Config: z_dim must hold integers"):
        D3Model.from_pretrained(path)
    with pytest.raises(ValueError, match="z_dim must hold integers"):  # AutoConfig reads it before d3hf can
        AutoModel.from_pretrained(path)


def test_truncated_weights(artifact, tmp_path, capsys):
    path = tampered(artifact, tmp_path)
    truncate(tmp_path / "tampered")
    with pytest.raises(ArtifactError, match="truncated or not a safetensors file"):
        D3Model.from_pretrained(path)
    assert main(["info", path]) == 2
    err = capsys.readouterr().err
    assert "truncated" in err and "Traceback" not in err


def test_auto_map_runs_nothing_from_the_artifact(artifact, tmp_path):
    marker = tmp_path / "code_ran"
    path = tampered(artifact, tmp_path, edit_config=lambda c: c.update(
        auto_map={"AutoConfig": "payload.Config", "AutoModel": "payload.Model"}))
    with open(os.path.join(path, "payload.py"), "w") as f:
        f.write(f"open({str(marker)!r}, 'w').write('ran')\nfrom d3hf import D3Config as Config, D3Model as Model\n")
    reference = D3Model.from_pretrained(str(artifact))
    for model in (AutoModel.from_pretrained(path), D3Model.from_pretrained(path, trust_remote_code=True)):
        assert type(model) is D3Model
        assert torch.equal(model.prior_means, reference.prior_means)
    assert not marker.exists()


def test_intact_artifact_loads(artifact):
    model = D3Model.from_pretrained(str(artifact))
    assert model.config.num_classes == 3 and torch.isfinite(model.prior_means).all()
