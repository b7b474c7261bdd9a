"""glibc allocator tuning of the processes d3hf owns."""

import os
import subprocess
import sys

import pytest

ALLOC_FREE_LOOP = """
import importlib.util, resource
spec = importlib.util.spec_from_file_location("allocator", {path!r})  # not the package: no torch import
allocator = importlib.util.module_from_spec(spec)
spec.loader.exec_module(allocator)
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        block = bytearray(64 << 20)  # zeroed: touches every page
        del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
first = faults()
applied = allocator.keep_freed_memory()
faults()  # the heap grows once
print(applied, first, faults())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_keeping_freed_memory_stops_the_page_faults_of_large_blocks():
    import d3hf.utils.allocator

    code = ALLOC_FREE_LOOP.format(path=d3hf.utils.allocator.__file__)
    run = lambda env: subprocess.run([sys.executable, "-c", code], env=env,  # noqa: E731
                                     capture_output=True, text=True, check=True).stdout.split()
    # 64 MB blocks are above glibc's largest mmap threshold: by default each one costs its 16,384 pages.
    applied, before, after = run({**os.environ, "D3HF_KEEP_FREED_MEMORY": "1"})
    assert applied == "True" and int(before) > 5 * 16000 and int(after) < int(before) // 20
    applied, before, after = run({**os.environ, "D3HF_KEEP_FREED_MEMORY": "0"})
    assert applied == "False" and int(after) > int(before) // 2


RELEASE = """
import importlib.util
spec = importlib.util.spec_from_file_location("allocator", {path!r})
allocator = importlib.util.module_from_spec(spec)
spec.loader.exec_module(allocator)
def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
import torch  # noqa: F401 -- release_memory imports it: loaded before the measurement
allocator.keep_freed_memory()  # as the command line runs: freed memory stays in the process
block = bytearray(b"x" * (256 << 20))
del block
held = rss_mb()
print(allocator.release_memory(), held, rss_mb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_release_memory_gives_freed_memory_back_between_subtasks():
    import d3hf.utils.allocator

    out = subprocess.run([sys.executable, "-c", RELEASE.format(path=d3hf.utils.allocator.__file__)],
                         capture_output=True, text=True, check=True).stdout.split()
    trimmed, held, after = out[0], float(out[1]), float(out[2])
    assert trimmed == "True" and held - after > 200  # the 256 MB kept by keep_freed_memory are returned
