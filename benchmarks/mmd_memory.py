"""Memory and speed of the MMD term at 64x64x3, all classes at once against chunks of classes, with
the rule's estimate beside each (``d3hf.distill.distiller.MMD_BYTES_PER_SCALAR`` times the
activation scalars of the images decoded and embedded together).

Each cell is one Distiller iteration of the MMD term alone (``mtt_weight 0``: the MTT unroll has a
rule of its own, benchmarks/unroll_memory.md) in a fresh process, with the same code path as
``d3hf distill``: growth = the process's peak RSS during ``step()`` (its high-water mark reset
just before) minus its RSS before it, after freed memory went back to the system; then ``TIMED`` more
iterations give the median wall and CPU seconds of one. Data: generated
(benchmarks/synthetic.py), 64x64x3; student and feature network ConvNet-4 width 128 (as the
paper's 64x64 runs); ipc_budget 1 with `auto` sizes. Cached per cell in benchmarks/cache/mmd_memory/:

    python benchmarks/mmd_memory.py               # every cell, then benchmarks/mmd_memory.md
    python benchmarks/mmd_memory.py --cell 2      # one cell (chunk of 2 classes), prints JSON
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a file: the repo root
from benchmarks.cells import cached  # noqa: E402
from benchmarks.synthetic import write_synthetic  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(HERE, "cache", "mmd_memory")
SHAPE, CLASSES, TRAIN_PER_CLASS, MMD_SAMPLES, WIDTH, DEPTH = (3, 64, 64), 20, 40, 16, 128, 4
CHUNKS = (CLASSES, 5, 2, 1)
TIMED = 4


def settings(chunk: int) -> dict:
    return dict(dataset=os.path.join(CACHE, "data"), ipc_budget=1.0, mtt_weight=0.0, mmd_weight=1.0,
                mmd_samples=MMD_SAMPLES, mmd_chunk_classes=str(chunk), student_width=WIDTH, student_depth=DEPTH,
                num_experts=1, expert_epochs_total=2, max_start_epoch=1, min_start_epoch=0, expert_epochs=1,
                init="random", iterations=1, num_threads=2)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def measure(chunk: int) -> dict:
    import torch

    from d3hf.distill import distiller as engine
    from d3hf.distill.config import DistillArguments
    from d3hf.distill.experts import build_expert_buffer
    from d3hf.distill.runner import build_config, expert_settings, load_data
    from d3hf.modeling.modeling_d3 import D3Model
    from d3hf.utils.allocator import keep_freed_memory
    from d3hf.utils.environment import cpu_model

    keep_freed_memory()  # as `d3hf distill` runs: freed activations reused, not faulted in afresh
    torch.set_num_threads(2)
    write_synthetic(os.path.join(CACHE, "data"), SHAPE, CLASSES, TRAIN_PER_CLASS, 2)
    args = DistillArguments(**settings(chunk))
    data = load_data(args.data, 0)
    data.keep_train_in_memory()
    buffer = build_expert_buffer(data, expert_settings(args, data.image_shape), os.path.join(CACHE, "experts"),
                                 show_progress=False)
    torch.manual_seed(0)
    model = D3Model(build_config(args, data))
    distiller = engine.Distiller(model, data, buffer, args.matching, seed=0)
    per_image = engine.mmd_activation_scalars(distiller.model, distiller.feature_net, data.image_shape)
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # what earlier work freed goes back: growth is the step's own
    before = _rss()
    with open("/proc/self/clear_refs", "w") as f:  # reset the high-water mark (Linux >= 4.0)
        f.write("5")
    distiller.step()
    growth = _peak() - before
    wall, cpu = [], []
    for _ in range(TIMED):
        w, c = time.perf_counter(), time.process_time()
        distiller.step()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return {"chunk_classes": distiller.mmd_chunk_classes, "classes": CLASSES, "mmd_samples": MMD_SAMPLES,
            "images_at_once": MMD_SAMPLES * distiller.mmd_chunk_classes, "activation_scalars_per_image": per_image,
            "growth_mb": growth / 2**20, "rss_before_mb": before / 2**20,
            "bytes_per_scalar": growth / (MMD_SAMPLES * distiller.mmd_chunk_classes * per_image),
            "decoder": model.config.decoders[0]["channels"], "cpu": f"{cpu_model()}, {os.cpu_count()} threads",
            "wall_s": statistics.median(wall), "cpu_s": statistics.median(cpu), "torch_threads": torch.get_num_threads()}


def report(rows: list[dict]) -> str:
    from d3hf.distill.distiller import CPU_MMD_CHUNK_BYTES, MMD_BYTES_PER_SCALAR

    first = rows[0]
    lines = ["# MMD term memory and speed at 64x64x3", "",
             f"Command: `python benchmarks/mmd_memory.py`; {first['cpu']}. {first['classes']} classes x "
             f"{first['mmd_samples']} samples, 64x64x3 generated images, ipc_budget 1 (`auto`: decoder channels "
             f"{first['decoder']}), feature network ConvNet-{DEPTH} width {WIDTH}; one iteration of the MMD term "
             f"alone per fresh process, {first['torch_threads']} torch threads; growth = peak RSS during the first "
             f"iteration minus RSS before it; seconds: medians of the {TIMED} iterations after it.", "",
             "| classes per chunk | images decoded at once | RSS growth MB | rule's estimate MB | bytes per activation "
             "scalar | wall s/it | CPU s/it |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: -r["chunk_classes"]):
        estimate = MMD_BYTES_PER_SCALAR * r["images_at_once"] * r["activation_scalars_per_image"] / 2**20
        lines.append(f"| {r['chunk_classes']} | {r['images_at_once']} | {r['growth_mb']:.0f} | {estimate:.0f} "
                     f"| {r['bytes_per_scalar']:.1f} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} |")
    lines += ["", f"Activation scalars per image (decoder + feature network): {first['activation_scalars_per_image']:,}; "
              f"the rule counts {MMD_BYTES_PER_SCALAR} bytes for each (`MMD_BYTES_PER_SCALAR`, rounded up from the "
              "largest measured here).",
              "`mmd_chunk_classes: auto` takes as many classes per chunk as the estimate fits in a quarter of the "
              f"free memory, on the CPU at most {CPU_MMD_CHUNK_BYTES // 2**20} MB (`CPU_MMD_CHUNK_BYTES`: there small "
              "chunks cost no more time, above); each chunk is backpropagated before the next is "
              "decoded, so only one chunk's graph is held (the chunks' losses and gradients add up to the whole "
              "term's: tests/distill/test_distiller.py).",
              ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cell", type=int, metavar="CHUNK_CLASSES")
    a = p.parse_args()
    if a.cell:
        print(json.dumps(measure(a.cell)))
        return

    def run(chunk: int) -> dict:
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--cell", str(chunk)], check=True,
                             capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    rows = [cached(os.path.join(CACHE, f"chunk{chunk}.json"), lambda chunk=chunk: run(chunk)) for chunk in CHUNKS]
    text = report(rows)
    with open(os.path.join(HERE, "mmd_memory.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
