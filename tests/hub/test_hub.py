"""Hub and datasets integration over real HTTP.

A Hub-compatible server runs on loopback (tests/hub/server.py); the real huggingface_hub,
transformers and datasets clients talk to it through HF_ENDPOINT with HF_HUB_DISABLE_XET=1.
Nothing in those libraries is patched.
"""

import importlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from huggingface_hub import DatasetCard, HfApi, hf_hub_download
from transformers import AutoModel

from d3hf import D3Model, HubAccessError, generate_dataset, load_artifact, load_distilled, save_artifact
from d3hf.commands.cli import main
from d3hf.hub.push import push_artifact, push_synthetic_dataset
from tests.helpers import TINY, make_model
from tests.hub.server import HubServer


def reload_hf_configuration() -> None:
    """Re-read the Hugging Face environment variables the way a new process does.

    ``huggingface_hub.constants`` and ``datasets.config`` read HF_ENDPOINT, HF_HUB_OFFLINE,
    HF_HOME, HF_HUB_CACHE, HF_HUB_DISABLE_XET... once, at import, and conftest imported them
    in offline mode. Re-running that import-time configuration is the in-process equivalent
    of starting a process with the variables set; no client function is replaced. The
    command-line tests run real subprocesses with the same variables.
    """
    import datasets.config
    import huggingface_hub.constants

    importlib.reload(huggingface_hub.constants)
    importlib.reload(datasets.config)  # copies HF_HUB_OFFLINE from huggingface_hub.constants


@dataclass
class HubEnv:
    server: HubServer
    monkeypatch: pytest.MonkeyPatch
    home: Path
    caches: int = 0

    def set(self, **env: str) -> None:
        for key, value in env.items():
            self.monkeypatch.setenv(key, value)
        reload_hf_configuration()

    def fresh_cache(self) -> Path:
        """Point the Hub and datasets caches at new, empty folders."""
        self.caches += 1
        cache = self.home / f"cache-{self.caches}"
        self.set(HF_HUB_CACHE=str(cache / "hub"), HF_DATASETS_CACHE=str(cache / "datasets"))
        return cache

    def offline(self) -> None:
        self.set(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")

    def created(self, repo_id: str) -> list[dict]:
        """The bodies of every repo-creation request for ``repo_id``."""
        ns, name = repo_id.split("/")
        return [body for method, path, body in self.server.requests
                if path == "/api/repos/create" and body["organization"] == ns and body["name"] == name]


@pytest.fixture(scope="module")
def hub():
    with HubServer() as server:
        yield server


@pytest.fixture
def hub_env(hub, tmp_path, monkeypatch):
    """The real clients pointed at the loopback Hub, online, with a fake token and empty caches."""
    env = HubEnv(hub, monkeypatch, tmp_path / "hf-home")
    env.set(
        HF_ENDPOINT=hub.url,
        HF_HUB_DISABLE_XET="1",
        HF_HOME=str(env.home),
        HF_HUB_OFFLINE="0",
        HF_DATASETS_OFFLINE="0",
        HF_TOKEN="hf_loopback_test_token",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_DISABLE_TELEMETRY="1",
    )
    env.fresh_cache()
    yield env
    monkeypatch.undo()
    reload_hf_configuration()


@pytest.fixture(scope="module")
def model() -> D3Model:
    return make_model(distillation={"dataset": "digits", "seed": 0})


@pytest.fixture(scope="module")
def artifact(model, tmp_path_factory) -> Path:
    """A saved artifact folder, with an eval.json so the card shows an evaluation."""
    path = tmp_path_factory.mktemp("artifact")
    evaluation = {"results": [{"protocol": "P-noaug", "arch": "convnet", "mean": 0.5, "std": 0.0, "seeds": 1}]}
    save_artifact(model, str(path), evaluation)
    return path


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def rows(dataset) -> tuple[list[np.ndarray], list[int]]:
    return [np.asarray(image) for image in dataset["image"]], list(dataset["label"])


def assert_same_rows(a, b) -> None:
    images_a, labels_a = rows(a)
    images_b, labels_b = rows(b)
    assert labels_a == labels_b
    assert len(images_a) == len(images_b)
    for x, y in zip(images_a, images_b):
        np.testing.assert_array_equal(x, y)


def cached_repos(cache: Path) -> list[str]:
    """The repos in the Hub cache under ``cache`` (``models--ns--name``, ...)."""
    hub_cache = cache / "hub"
    if not hub_cache.exists():
        return []
    return sorted(p.name for p in hub_cache.iterdir() if p.name.startswith(("models--", "datasets--")))


# ----------------------------------------------------------------------------- model repos


def test_pushed_artifact_loads_like_the_local_folder(hub_env, artifact, model):
    pushed = push_artifact(str(artifact), "ns/name")

    files = HfApi().list_repo_files("ns/name", revision=pushed.commit)
    assert sorted(files) == sorted(os.listdir(artifact) + [".gitattributes"])
    assert {"config.json", "model.safetensors", "README.md", "samples.png", "eval.json"} <= set(files)
    card = Path(hf_hub_download("ns/name", "README.md", revision=pushed.commit))
    assert card.read_bytes() == (artifact / "README.md").read_bytes()  # our card, never a generic one

    cache = hub_env.fresh_cache()
    assert cached_repos(cache) == []
    remote = AutoModel.from_pretrained("ns/name")
    assert isinstance(remote, D3Model)
    assert_same_weights(remote, model)
    assert cached_repos(cache) == ["models--ns--name"]

    hub_env.fresh_cache()
    assert_same_rows(load_distilled("ns/name", num_per_class=3, seed=1),
                     load_distilled(str(artifact), num_per_class=3, seed=1))


def test_push_uploads_only_the_artifact_and_leaves_the_folder_as_it_was(hub_env, artifact, tmp_path):
    folder = tmp_path / "artifact"
    shutil.copytree(artifact, folder)
    (folder / "notes.txt").write_text("private notes")
    (folder / "drafts").mkdir()
    (folder / "drafts" / "a.py").write_text("x = 1\n")
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    assert main(["push", str(folder), "--repo_id", "ns/only-artifact"]) == 0
    files = HfApi().list_repo_files("ns/only-artifact")
    assert "notes.txt" not in files and not any(f.startswith("drafts") for f in files)
    assert {"config.json", "model.safetensors", "README.md"} <= set(files)
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def test_second_push_is_picked_up(hub_env, tmp_path):
    first_model, second_model = make_model(seed=1), make_model(seed=2)
    first_model.save_pretrained(str(tmp_path / "a"))
    second_model.save_pretrained(str(tmp_path / "b"))

    first = push_artifact(str(tmp_path / "a"), "ns/twice")
    assert_same_weights(load_artifact("ns/twice"), first_model)
    second = push_artifact(str(tmp_path / "b"), "ns/twice")
    assert second.commit != first.commit
    # Same cache: the new commit is resolved and downloaded, the old one stays addressable.
    assert_same_weights(load_artifact("ns/twice"), second_model)
    assert_same_weights(AutoModel.from_pretrained("ns/twice"), second_model)
    assert_same_weights(load_artifact("ns/twice", revision=first.commit), first_model)


def test_push_of_a_bare_save_pretrained_folder_renders_the_d3hf_card(hub_env, model, tmp_path):
    folder = tmp_path / "bare"
    model.save_pretrained(str(folder))
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]  # the model writes tensors only
    pushed = push_artifact(str(folder), "ns/bare")
    files = HfApi().list_repo_files("ns/bare", revision=pushed.commit)
    assert {"config.json", "model.safetensors", "README.md", "samples.png"} <= set(files)
    card = Path(hf_hub_download("ns/bare", "README.md", revision=pushed.commit)).read_text()
    assert "load_distilled" in card and "dataset-distillation" in card
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]  # the folder is left as it was


def test_push_to_a_branch(hub_env, artifact, model):
    pushed = push_artifact(str(artifact), "ns/branched", revision="v1")
    assert pushed.revision == "v1"
    assert_same_weights(load_artifact("ns/branched", revision="v1"), model)
    assert HfApi().list_repo_files("ns/branched") == [".gitattributes"]  # main untouched


def test_offline_mode_reads_from_the_cache(hub_env, artifact, model):
    push_artifact(str(artifact), "ns/offline")
    push_synthetic_dataset(model, "ns/offline-data", num_per_class=2, seed=3, config_name="k2")
    online = load_distilled("ns/offline", num_per_class=2, seed=4)
    AutoModel.from_pretrained("ns/offline")
    online_data = datasets.load_dataset("ns/offline-data", "k2", split="train")
    requests_before = len(hub_env.server.requests)

    hub_env.offline()
    assert_same_rows(load_distilled("ns/offline", num_per_class=2, seed=4), online)
    assert_same_weights(AutoModel.from_pretrained("ns/offline"), model)
    assert_same_rows(datasets.load_dataset("ns/offline-data", "k2", split="train"), online_data)
    assert len(hub_env.server.requests) == requests_before  # all of it came from the cache

    with pytest.raises(HubAccessError, match="not in the local cache"):
        load_distilled("ns/never-downloaded", num_per_class=1)
    with pytest.raises(HubAccessError, match="offline mode is on"):
        push_artifact(str(artifact), "ns/offline")


# ----------------------------------------------------------------------------- dataset repos


def test_pushed_dataset_loads_with_plain_datasets(hub_env, model):
    push_synthetic_dataset(model, "ns/name2", num_per_class=3, seed=2, config_name="k3",
                           generator="ns/gen", generator_revision="0123abc")
    expected = load_distilled(model, 3, seed=2)

    hub_env.fresh_cache()
    loaded = datasets.load_dataset("ns/name2", "k3", split="train")
    assert loaded.features == expected.features  # Image + ClassLabel with the class names
    assert loaded.features["label"].names == model.config.class_names
    assert_same_rows(loaded, expected)

    card = DatasetCard.load(hf_hub_download("ns/name2", "README.md", repo_type="dataset"))
    assert card.data.d3hf["k3"] == {"generator": "ns/gen", "generator_revision": "0123abc", "source_dataset": "digits",
                                    "num_per_class": 3, "seed": 2, "num_rows": 30}
    assert model.storage().to_markdown() in card.text
    assert "dataset-distillation" in card.data.tags


def test_dataset_configs_coexist_and_a_second_push_replaces_one(hub_env, model):
    push_synthetic_dataset(model, "ns/configs", num_per_class=3, seed=1, config_name="k3")
    push_synthetic_dataset(model, "ns/configs", num_per_class=2, seed=7, config_name="k2")
    assert_same_rows(datasets.load_dataset("ns/configs", "k3", split="train"), load_distilled(model, 3, seed=1))

    push_synthetic_dataset(model, "ns/configs", num_per_class=3, seed=9, config_name="k3")
    assert_same_rows(datasets.load_dataset("ns/configs", "k3", split="train"), load_distilled(model, 3, seed=9))
    assert_same_rows(datasets.load_dataset("ns/configs", "k2", split="train"), load_distilled(model, 2, seed=7))
    card = DatasetCard.load(hf_hub_download("ns/configs", "README.md", repo_type="dataset"))
    assert {name: r["seed"] for name, r in card.data.d3hf.items()} == {"k2": 7, "k3": 9}


def test_hub_dataset_id_is_a_distill_source(hub_env, digits, tmp_path, fresh_accelerate_state, capsys):
    def tiny_split(split: str, per_class: int) -> datasets.Dataset:
        labels = digits.labels(split)
        keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)]))
        table = digits.train if split == "train" else digits.test
        return table.select(keep.tolist()).remove_columns("source_row")

    datasets.DatasetDict(train=tiny_split("train", 12), test=tiny_split("test", 3)).push_to_hub("ns/tiny-digits")
    cache = hub_env.fresh_cache()

    settings = {**TINY, "dataset": "ns/tiny-digits", "output_dir": str(tmp_path / "run"), "iterations": 2,
                "num_experts": 1, "cpu": True, "num_threads": 1}
    argv = ["distill"] + [item for key, value in settings.items() for item in (f"--{key}", str(value))]
    assert main(argv) == 0, capsys.readouterr().err
    distilled = D3Model.from_pretrained(str(tmp_path / "run" / "artifact"))
    assert distilled.config.source["source"] == "ns/tiny-digits"
    assert distilled.config.source["num_train_rows"] == 120
    assert cached_repos(cache) == ["datasets--ns--tiny-digits"]  # read through the Hub, not a local copy


# ----------------------------------------------------------------------------- access and errors


def test_private_flag_reaches_repo_creation(hub_env, artifact, model, capsys):
    assert main(["push", str(artifact), "--repo-id", "ns/secret", "--private"]) == 0
    assert main(["push", str(artifact), "--repo_id", "ns/open"]) == 0
    assert "ns/secret" in capsys.readouterr().out
    assert [body["visibility"] for body in hub_env.created("ns/secret")] == ["private"]
    assert [body["visibility"] for body in hub_env.created("ns/open")] == ["public"]

    hub_env.monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(HubAccessError, match="private and you are not authorised"):
        load_distilled("ns/secret", num_per_class=1)
    assert len(load_distilled("ns/open", num_per_class=1)) == model.config.num_classes


def test_hub_failures_are_one_clear_error(hub_env, artifact, tmp_path, capsys):
    with pytest.raises(HubAccessError, match="ns/missing: the repo does not exist"):
        load_distilled("ns/missing", num_per_class=1)
    push_artifact(str(artifact), "ns/errors")
    with pytest.raises(HubAccessError, match="revision 'nope' does not exist"):
        load_artifact("ns/errors", revision="nope")

    capsys.readouterr()  # only what the command writes counts
    assert main(["generate", "ns/missing", "--num-per-class", "1", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("d3hf generate: error: Cannot load ns/missing") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
    assert main(["distill", "--dataset", "ns/missing-data", "--output_dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "'ns/missing-data'" in err and "doesn't exist on the Hub" in err and err.count("\n") == 1

    hub_env.monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(HubAccessError, match="log in"):
        push_artifact(str(artifact), "ns/new-without-token")


def test_push_refuses_a_folder_that_is_not_an_artifact(hub_env, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "README.md").write_text("card")
    with pytest.raises(ValueError, match="not a d3hf artifact"):
        push_artifact(str(tmp_path), "ns/not-d3")
    assert hub_env.created("ns/not-d3") == []


# ----------------------------------------------------------------------------- the command line


@pytest.mark.integration
def test_cli_push_and_generate_as_subprocesses(hub_env, artifact, model, tmp_path):
    def start(*args: str) -> subprocess.Popen:
        # The HF_* variables hub_env set are in os.environ: the child reads them at import.
        return subprocess.Popen([sys.executable, "-m", "d3hf", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})

    def finish(process: subprocess.Popen) -> str:
        stdout, stderr = process.communicate(timeout=180)
        assert process.returncode == 0, stderr
        return stdout

    # Both commands at once (each mostly imports torch): generate reads a repo pushed beforehand.
    push_artifact(str(artifact), "ns/cli-source")
    out = tmp_path / "generated"
    pushing = start("push", str(artifact), "--repo-id", "ns/cli", "--private", "--dataset-repo", "ns/cli-data",
                    "--num-per-class", "2", "--seed", "3", "--config-name", "k2")
    generating = start("generate", "ns/cli-source", "--num_per_class", "2", "--seed", "3", "--output", str(out),
                       "--format", "parquet")
    pushed, generated = finish(pushing), finish(generating)

    model_commit = HfApi().model_info("ns/cli").sha
    assert f"model: ns/cli at main commit {model_commit}" in pushed
    assert [b["visibility"] for b in hub_env.created("ns/cli") + hub_env.created("ns/cli-data")] == ["private"] * 2
    assert_same_rows(datasets.load_dataset("ns/cli-data", "k2", split="train"), load_distilled(model, 2, seed=3))
    card = DatasetCard.load(hf_hub_download("ns/cli-data", "README.md", repo_type="dataset"))
    assert card.data.d3hf["k2"]["generator_revision"] == model_commit

    assert "wrote 20 samples" in generated
    loaded = datasets.load_dataset("parquet", data_dir=str(out / "data"), split="train")
    assert loaded.features == load_distilled(model, 1).features
    assert_same_rows(loaded, load_distilled(model, 2, seed=3))


# ----------------------------------------------------------------------------- local use


@pytest.mark.parametrize("fmt", ["arrow", "parquet", "imagefolder"])
def test_generate_formats_round_trip(model, tmp_path, fmt):
    out = tmp_path / fmt
    generate_dataset(model, str(out), num_per_class=2, seed=5, format=fmt)
    expected = load_distilled(model, 2, seed=5)
    if fmt == "arrow":
        loaded = datasets.load_from_disk(str(out))
    elif fmt == "parquet":
        loaded = datasets.load_dataset(str(out), split="train")
    else:
        loaded = datasets.load_dataset("imagefolder", data_dir=str(out), split="train")
        assert loaded.features["label"].names == model.config.class_names  # folder names
    assert_same_rows(loaded, expected)
    card = DatasetCard.load(out / "README.md")
    assert card.data.d3hf["default"]["seed"] == 5


@pytest.mark.parametrize("class_names", [[str(i) for i in range(12)], ["b", "a/x", "a_x"]],
                         ids=["numeric-names-past-9", "unsorted-and-colliding"])
def test_imagefolder_keeps_label_ids_when_names_do_not_sort_in_id_order(class_names, tmp_path):
    model = make_model(class_names=class_names, distillation={"dataset": "digits", "seed": 0})
    generate_dataset(model, str(tmp_path / "f"), num_per_class=1, seed=5, format="imagefolder")
    loaded = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "f"), split="train")
    assert_same_rows(loaded, load_distilled(model, 1, seed=5))  # the label ids survive the folder names
    assert len(loaded.features["label"].names) == len(class_names)


def test_generate_refuses_unknown_format(model, tmp_path):
    with pytest.raises(ValueError, match="format must be one of arrow, parquet, imagefolder"):
        generate_dataset(model, str(tmp_path / "x"), num_per_class=1, format="csv")


def test_load_distilled_is_deterministic_and_streams_fresh_epochs(artifact, model):
    a = load_distilled(str(artifact), num_per_class=3, seed=0)
    assert len(a) == 3 * model.config.num_classes
    assert_same_rows(a, load_distilled(str(artifact), num_per_class=3, seed=0))
    assert_same_rows(a, load_distilled(model, 3, seed=0))

    stream = load_distilled(str(artifact), num_per_class=3, seed=0, streaming=True)
    assert isinstance(stream, datasets.IterableDataset)

    def epoch(e: int) -> list:
        stream.set_epoch(e)
        return list(stream)

    first, again, second = epoch(0), epoch(0), epoch(1)
    assert sorted(r["label"] for r in first) == sorted(a["label"])
    assert [np.asarray(r["image"]).tobytes() for r in first] == [np.asarray(r["image"]).tobytes() for r in again]
    assert not {np.asarray(r["image"]).tobytes() for r in first} & {np.asarray(r["image"]).tobytes() for r in second}


def test_load_distilled_rejects_bad_arguments(artifact, tmp_path):
    with pytest.raises(ValueError, match="num_per_class must be at least 1"):
        load_distilled(str(artifact), num_per_class=0)
    with pytest.raises(ValueError, match="only applies to Hub repos"):
        load_distilled(str(artifact), num_per_class=1, revision="main")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        load_distilled(str(tmp_path / "file.txt"), num_per_class=1)
