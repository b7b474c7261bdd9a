"""Issue #26: the license, a quiet setup, --max_steps in the downstream recipe, the model card's
metadata, and the notes of a fixed image set's evaluation."""

import hashlib
import os
import shutil
import subprocess
import sys
import tomllib

import pytest
import torch

import d3hf
from d3hf import D3Config, D3Model, family_spec

ROOT = os.path.join(os.path.dirname(__file__), "..")


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


# ----------------------------------------------------------------------------- license and packaging


def test_license_file_is_the_apache_license_2_0():
    with open(os.path.join(ROOT, "LICENSE"), "rb") as f:
        text = f.read()
    # The md5 of https://www.apache.org/licenses/LICENSE-2.0.txt: the canonical text, unchanged.
    assert hashlib.md5(text).hexdigest() == "3b83ef96387f14655fc854ddc3c6bd57"


def test_package_metadata_is_pep_621_with_an_spdx_license():
    from packaging.specifiers import SpecifierSet

    assert not os.path.exists(os.path.join(ROOT, "setup.cfg"))
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        pyproject = tomllib.load(f)
    project = pyproject["project"]
    assert project["name"] == "d3hf" and project["readme"] == "README.md"
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert not [c for c in project.get("classifiers", []) if c.startswith("License ::")]
    assert project["dynamic"] == ["version"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "d3hf._version.__version__"}
    assert project["scripts"] == {"d3hf": "d3hf.commands.cli:main"}
    assert set(project["optional-dependencies"]) == {"test", "bench", "mnist5k", "digits"}
    # Ranges for users; the exact versions CI installs are pinned in .ci/constraints.txt.
    assert not [r for r in project["dependencies"] if "==" in r and not r.startswith("torch")]
    with open(os.path.join(ROOT, ".ci", "constraints.txt")) as f:
        assert "transformers==5.23.0" in f.read().split()
    assert pyproject["tool"]["setuptools"]["packages"]["find"]["include"] == ["d3hf*"]
    assert pyproject["tool"]["pytest"]["ini_options"]["testpaths"] == ["tests", "benchmarks/tests"]
    setuptools = next(r for r in pyproject["build-system"]["requires"] if r.startswith("setuptools"))
    spec = SpecifierSet(setuptools[len("setuptools"):])
    assert "77.0.0" in spec and "76.1.0" not in spec  # 77: PEP 639 license expressions
    # The version is read from the source, without importing d3hf (and torch).
    probe = ("import sys; from setuptools.config.expand import read_attr; "
             "print(read_attr('d3hf._version.__version__', {}, '.'), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [d3hf.__version__, "False"]


EDITABLE_NOTICE = """\
  /tmp/pip-build-env-x/overlay/lib/python3.11/site-packages/setuptools/command/editable_wheel.py:354: \
BuildBackendWarning: Editable installation.
  !!

          ********************************************************************************
          Please be careful with folders in your working directory with the same
          name as your package as they may take precedence during imports.
          ********************************************************************************

  !!
    with strategy, WheelFile(wheel_path, "w") as wheel_obj:
"""

# Stands in for .venv/bin/python: "-m pip install" prints $FAKE_PIP_OUTPUT and fails with
# status 3 on the editable install when $FAKE_PIP_FAIL is set; anything else is the final check.
FAKE_PYTHON = """#!/usr/bin/env bash
if [ "$1 $2 $3" = "-m pip install" ]; then
  if [ -n "${FAKE_PIP_FAIL:-}" ] && [[ " $* " == *" -e "* ]]; then
    echo "ERROR: No matching distribution"
    exit 3
  fi
  printf '%s' "${FAKE_PIP_OUTPUT:-}"
  exit 0
fi
echo "d3hf 0.1.0 torch fake"
"""


def run_setup(checkout, **env) -> subprocess.CompletedProcess:
    """.ci/setup --test in a copy of the checkout whose .venv/bin/python is ``FAKE_PYTHON``."""
    (checkout / ".ci").mkdir(parents=True)
    shutil.copy(os.path.join(ROOT, ".ci", "setup"), checkout / ".ci" / "setup")
    (checkout / ".venv" / "bin").mkdir(parents=True)
    python = checkout / ".venv" / "bin" / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    return subprocess.run(["bash", str(checkout / ".ci" / "setup"), "--test"], capture_output=True, text=True,
                          env={**os.environ, **env})


@pytest.mark.integration
def test_setup_prints_a_handful_of_lines_but_keeps_other_warnings(tmp_path):
    done = run_setup(tmp_path / "quiet", FAKE_PIP_OUTPUT=EDITABLE_NOTICE)
    assert done.returncode == 0, done.stderr
    assert (done.stdout + done.stderr).splitlines() == ["d3hf 0.1.0 torch fake"]
    warned = run_setup(tmp_path / "warned", FAKE_PIP_OUTPUT=EDITABLE_NOTICE + "WARNING: a real warning\n")
    assert warned.returncode == 0 and "WARNING: a real warning" in warned.stdout + warned.stderr
    assert "Editable installation" not in warned.stdout + warned.stderr


@pytest.mark.integration
def test_setup_fails_and_shows_the_error_when_pip_fails(tmp_path):
    done = run_setup(tmp_path, FAKE_PIP_FAIL="1", FAKE_PIP_OUTPUT=EDITABLE_NOTICE)
    assert done.returncode == 3
    assert "ERROR: No matching distribution" in done.stderr
    assert "d3hf 0.1.0 torch fake" not in done.stdout  # stopped before the final check


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
    model = tiny_model()
    d3 = evaluate(lambda s: model_source(model, protocol.num_per_class, s), digits, protocol)
    assert d3["notes"] == protocol.describe() == ARTIFACT_NOTES  # as every artifact row read before
