"""`load_distilled(model, n)` speed against its parts, and the expert buffer's size on disk (fp32 vs fp16).

    python benchmarks/speed_and_storage.py        # writes benchmarks/speed_and_storage.md

`load_distilled(model, n)` is timed against the sum of the two things it cannot avoid: the bare decoder
forward on the same latents, and `datasets.Dataset.from_dict` on the same uint8 arrays (with
the same features, so the PNG encoding is in both). Target: at most 1.5x that sum. The decoder
is the MNIST-5k ipc_budget 10 recipe's, freshly initialised (its speed does not depend on the
weights). The expert buffers are built with the same recipe's settings and cached in
benchmarks/cache/speed_and_storage/.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import torch

from d3hf.utils.environment import cpu_model

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CACHE = os.path.join(HERE, "cache", "speed_and_storage")
RECIPE = os.path.join(REPO, "recipes", "mnist5k", "ipc10.yaml")
NUM_PER_CLASS = (100, 1000)
REPEATS = 3


def _recipe_args():
    import yaml

    from d3hf.distill.config import DistillArguments

    with open(RECIPE) as f:
        return DistillArguments(**yaml.safe_load(f))


def _median_seconds(fn) -> float:
    times = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def to_dataset_rows(data, args) -> list[dict]:
    from d3hf import load_distilled
    from d3hf.distill.runner import build_config
    from d3hf.hub.datasets import samples_to_dataset
    from d3hf.modeling.modeling_d3 import D3Model

    torch.manual_seed(0)
    model = D3Model(build_config(args, data)).eval()
    rows = []
    for n in NUM_PER_CLASS:
        prior_ids, noise = model.draw(n, seed=0)
        with torch.no_grad():
            latents = model.reparameterize(prior_ids, noise)
            images, labels = model.sample(n, seed=0)
        decoder = model.decoders[0]

        def bare_decoder():
            with torch.no_grad():
                for start in range(0, len(latents), 4096):
                    decoder(latents[start : start + 4096])

        total = _median_seconds(lambda: load_distilled(model, n, seed=0))
        forward = _median_seconds(bare_decoder)
        from_dict = _median_seconds(lambda: samples_to_dataset(images, labels, class_names=model.config.class_names))
        rows.append({"num_per_class": n, "images": len(labels), "to_dataset_s": total, "decoder_s": forward,
                     "from_dict_s": from_dict, "ratio": total / (forward + from_dict)})
    return rows


def expert_buffer_rows(data, args) -> list[dict]:

    from d3hf.distill.experts import build_expert_buffer
    from d3hf.distill.runner import expert_settings

    rows = []
    for dtype in ("float32", "float16"):
        settings = expert_settings(args.replace(expert_dtype=dtype), data.image_shape)
        t = time.perf_counter()
        buffer = build_expert_buffer(data, settings, os.path.join(CACHE, f"experts_{dtype}"), show_progress=False)
        rows.append({"dtype": dtype, "bytes": buffer.size_on_disk(), "experts": settings.num_experts,
                     # epochs 0..keep_epochs for trajectories, plus the final one for the MMD features
                     "snapshots_per_expert": settings.keep_epochs + 1 + (settings.epochs > settings.keep_epochs), "seconds": time.perf_counter() - t})
    return rows


def report(dataset_rows: list[dict], buffer_rows: list[dict]) -> str:
    lines = ["# load_distilled speed and expert buffer size", "",
             f"Command: `python benchmarks/speed_and_storage.py`. Machine: {cpu_model()}, {os.cpu_count()} CPU "
             f"cores, torch {torch.__version__}, {torch.get_num_threads()} torch thread(s); median of {REPEATS} runs.", "",
             "## `load_distilled(model, n)` against the bare decoder forward + `Dataset.from_dict` (same uint8 arrays)", "",
             "| samples per class | images | load_distilled (s) | decoder forward (s) | from_dict (s) | ratio | target |",
             "|---:|---:|---:|---:|---:|---:|---|"]
    for r in dataset_rows:
        verdict = "met" if r["ratio"] <= 1.5 else "MISSED"
        lines.append(f"| {r['num_per_class']} | {r['images']:,} | {r['to_dataset_s']:.3f} | {r['decoder_s']:.3f} | "
                     f"{r['from_dict_s']:.3f} | {r['ratio']:.2f}x | <= 1.5x: {verdict} |")
    lines += ["", "Decoder of `recipes/mnist5k/ipc10.yaml` (57,641 parameters), freshly initialised.", "",
              "## Expert buffer on disk (`recipes/mnist5k/ipc10.yaml` settings)", "",
              "| expert_dtype | experts | snapshots each | bytes on disk | build s (cached after the first run) |",
              "|---|---:|---:|---:|---:|"]
    for r in buffer_rows:
        lines.append(f"| {r['dtype']} | {r['experts']} | {r['snapshots_per_expert']} | {r['bytes']:,} | "
                     f"{r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    from d3hf.data.image_data import load_image_classification

    os.makedirs(CACHE, exist_ok=True)
    args = _recipe_args()
    data = load_image_classification(args.data.dataset)
    text = report(to_dataset_rows(data, args), expert_buffer_rows(data, args))
    with open(os.path.join(HERE, "speed_and_storage.md"), "w") as f:
        f.write(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
