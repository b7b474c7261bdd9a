"""The record of what a number was measured on."""

import platform

import torch

from d3hf.utils import environment


def test_measured_on_names_the_device_the_torch_build_and_threads():
    record = environment.measured_on("cpu")
    assert record["device"] == "cpu" and record["device_name"] == environment.cpu_model()
    assert record["torch"] == torch.__version__ and record["torch_threads"] == torch.get_num_threads()
    other = {**record, "device_name": "X", "torch": "t"}
    assert environment.describe({**other, "torch_threads": 1}) == "X (cpu), torch t, 1 thread"
    assert environment.describe({**other, "torch_threads": 2}) == "X (cpu), torch t, 2 threads"


def test_cpu_model_without_proc_cpuinfo_falls_back_to_platform(monkeypatch):
    monkeypatch.setattr(environment.os.path, "exists", lambda path: False)
    monkeypatch.setattr(platform, "processor", lambda: "")
    assert environment.cpu_model() == platform.machine()
