"""The package's shape: every module imports on its own, the layers hold, the architecture page is current."""

import os
import subprocess
import sys

from tests.helpers import REPO as ROOT

EACH_MODULE_ALONE = r"""
import importlib, pkgutil, sys
import d3hf
from tests.helpers import REPO
names = ["d3hf"] + [m.name for m in pkgutil.walk_packages(d3hf.__path__, "d3hf.") if m.name != "d3hf.__main__"]
failed = []
for name in names:
    for loaded in [m for m in sys.modules if m == "d3hf" or m.startswith("d3hf.")]:
        del sys.modules[loaded]  # torch and the other libraries stay: only d3hf starts from nothing
    try:
        importlib.import_module(name)
    except Exception as err:
        failed.append(f"{name}: {type(err).__name__}: {err}")
print(len(names))
print("\n".join(failed))
"""


def test_every_module_imports_on_its_own():
    # A circle that only bites in one import order shows up here, whatever module comes first.
    out = subprocess.run([sys.executable, "-c", EACH_MODULE_ALONE], capture_output=True, text=True, check=True,
                         cwd=ROOT, timeout=300).stdout.splitlines()
    assert int(out[0]) > 40 and not [line for line in out[1:] if line], out[1:]


def test_the_import_contracts_hold():
    # The layers and the no-circle rule of .importlinter (CI also runs `lint-imports`). In a
    # subprocess: import-linter reconfigures logging in the process that runs it.
    lint_imports = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    proc = subprocess.run([lint_imports, "--no-cache"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0 and "2 kept, 0 broken" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_the_architecture_page_is_current():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "docs", "architecture.py"), "--check"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_importing_d3hf_loads_neither_torch_nor_transformers():
    code = "import sys, d3hf; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.split() == ["False", "False"]
