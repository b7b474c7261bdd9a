"""Does the channels-last memory layout speed up the student on this CPU?

Times, with one torch thread, the two layouts interleaved (median of ``--repeats`` after one
warm-up each): a 10-step MTT unroll with its backward (the distillation's inner loop, double
backward) and 5 plain SGD steps at batch 256 (experts, evaluation), for ConvNet-3 width 128 at
32x32x3 and 28x28x1. Writes benchmarks/channels_last.md.

    python benchmarks/channels_last.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # run as a file: the repo root

CASES = (  # (what, image shape, images per step)
    ("unroll", (3, 32, 32), 10), ("unroll", (3, 32, 32), 100), ("unroll", (1, 28, 28), 100),
    ("sgd", (3, 32, 32), 256), ("sgd", (1, 28, 28), 256),
)


def time_case(kind: str, shape: tuple[int, int, int], batch: int, repeats: int) -> dict[str, float]:
    """CPU seconds of one run of ``kind`` in each layout: median of ``repeats``, interleaved."""
    import torch
    import torch.nn.functional as F

    from d3hf.distill.objectives import unroll_student
    from d3hf.nn.networks import ConvNet, flat_parameters

    torch.manual_seed(0)
    net = ConvNet(shape, 10, 3, 128)
    images = torch.randn(batch, *shape, requires_grad=kind == "unroll")
    labels = torch.arange(batch) % 10

    def run(channels_last: bool) -> None:
        x = images.contiguous(memory_format=torch.channels_last) if channels_last else images
        if kind == "unroll":
            theta0 = flat_parameters(net).detach()
            step_size = torch.tensor(0.01, requires_grad=True)
            theta = unroll_student(net, theta0.clone(), lambda step: (x, labels), step_size, 10)
            (theta - theta0).pow(2).sum().backward()
            return
        opt = torch.optim.SGD(net.parameters(), lr=0.01)
        for _ in range(5):
            opt.zero_grad()
            F.cross_entropy(net(x), labels).backward()
            opt.step()

    seconds: dict[str, list[float]] = {"nchw": [], "channels_last": []}
    for layout in seconds:  # warm-up
        run(layout == "channels_last")
    for _ in range(repeats):
        for layout, times in seconds.items():
            t = time.process_time()
            run(layout == "channels_last")
            times.append(time.process_time() - t)
    return {layout: statistics.median(times) for layout, times in seconds.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=os.path.join(HERE, "channels_last.md"))
    a = p.parse_args(argv)
    import torch

    from d3hf.utils.environment import cpu_model

    torch.set_num_threads(1)
    lines = ["# Channels-last on the CPU", "",
             f"`python benchmarks/channels_last.py` on {cpu_model()}, one torch thread, torch {torch.__version__}: "
             f"CPU seconds, median of {a.repeats}, the layouts interleaved. ConvNet-3 width 128; unroll: 10 "
             "differentiable SGD steps and the backward through them (the distillation's inner loop); sgd: 5 "
             "plain SGD steps (experts, evaluation).", "",
             "| run | images | NCHW s | channels-last s | ratio |", "|---|---|---:|---:|---:|"]
    for kind, shape, batch in CASES:
        t = time_case(kind, shape, batch, a.repeats)
        lines.append(f"| {kind} | {batch} x {'x'.join(map(str, shape))} | {t['nchw']:.3f} | "
                     f"{t['channels_last']:.3f} | {t['channels_last'] / t['nchw']:.2f} |")
        print(lines[-1], flush=True)
    with open(a.out, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
