"""The license, the package metadata and a quiet, honest .ci/setup."""

import hashlib
import os
import shutil
import subprocess
import sys
import tomllib

import pytest

import d3hf
from tests.helpers import REPO

ROOT = REPO


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
    assert set(project["optional-dependencies"]) == {"test", "bench", "mnist5k", "digits", "tracking"}
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
