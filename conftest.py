"""Fixtures of the whole test suite (tests/ and benchmarks/tests/): one thread, hermetic Hugging
Face caches, the markers, the embedded digits and a tiny expert buffer."""

import os
import shutil
import tempfile

# Set before torch / datasets are imported anywhere in the test session.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
_HF_CACHE = tempfile.mkdtemp(prefix="d3hf-tests-hf-")
os.environ["HF_DATASETS_CACHE"] = os.path.join(_HF_CACHE, "datasets")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from d3hf.utils.allocator import keep_freed_memory  # noqa: E402

torch.set_num_threads(1)
keep_freed_memory()  # as d3hf's command line does: no page faults for every large tensor

import d3hf  # noqa: E402
from d3hf.distill.experts import build_expert_buffer  # noqa: E402
from d3hf.distill.runner import expert_settings  # noqa: E402
from tests.helpers import tiny_args  # noqa: E402


@pytest.fixture(autouse=True)
def restore_d3hf_logging():
    """``main()`` binds a handler to the current (captured) stderr; later tests must not log to it."""
    import logging

    logger = logging.getLogger("d3hf")
    saved = logger.handlers[:], logger.level, logger.propagate
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: loads a larger embedded dataset (a few seconds)")
    config.addinivalue_line("markers", "integration: runs d3hf in subprocesses or end to end; "
                                       "`pytest -m 'not integration'` is the fast lane")


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_HF_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def digits():
    """The embedded digits dataset (1437 train / 360 test, 1x8x8); loaded once."""
    data = d3hf.load_image_classification("digits")
    data.normalization()
    return data


@pytest.fixture(scope="session")
def digits_buffer(digits, tmp_path_factory):
    """Expert trajectories for ``tiny_args()`` on digits, built once per session."""
    path = tmp_path_factory.mktemp("experts")
    return build_expert_buffer(digits, expert_settings(tiny_args()), str(path), show_progress=False)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps a process-wide state; reset it around tests that create an Accelerator."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
