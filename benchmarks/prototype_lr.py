"""Choose the pixel learning rate of the d3-prototypes grid row on a validation split.

Prototype images (benchmarks/grid/, method d3-prototypes) are optimised with D3's MTT + MMD
objective; their Adam step size is chosen here on 10 % of the train split held out as
validation, never on the test split. One line of JSON per learning rate; each is cached in
benchmarks/cache/prototype_lr/ (with the experts) under the recipe's settings digest, so a
stopped sweep resumes where it stopped and a changed recipe is swept anew.

    python benchmarks/prototype_lr.py --dataset digits --ipc 1 --lrs 0.001,0.01,0.1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a file: the repo root

from benchmarks import grid  # noqa: E402  (its settings digest keys the cache)

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(HERE, "cache", "prototype_lr")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--ipc", type=int, default=1)
    p.add_argument("--lrs", default="0.001,0.01,0.1")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)

    import torch
    import yaml

    from benchmarks.baselines import d3_objective_images
    from d3hf.data.image_data import load_image_classification
    from d3hf.distill.config import DistillArguments
    from d3hf.distill.experts import build_expert_buffer
    from d3hf.distill.runner import expert_settings
    from d3hf.evaluation.protocols import named_protocol
    from d3hf.evaluation.training import evaluate, fixed_source
    from d3hf.utils.allocator import keep_freed_memory
    from d3hf.utils.io import atomic_write_json

    keep_freed_memory()
    torch.set_num_threads(a.threads)
    data = load_image_classification(a.dataset).with_validation_split(0.1, 0)
    with open(os.path.join(os.path.dirname(HERE), "recipes", a.dataset, f"ipc{a.ipc}.yaml")) as f:
        args = DistillArguments(**{**yaml.safe_load(f), "eval_epochs": 0})
    cell_dir = os.path.join(CACHE, f"{a.dataset}_ipc{a.ipc}_{grid.settings_digest(args)}")
    buffer = None
    for lr in [float(v) for v in a.lrs.split(",")]:
        cell = os.path.join(cell_dir, f"lr{lr:g}.json")
        if not os.path.exists(cell):
            if buffer is None:
                buffer = build_expert_buffer(data, expert_settings(args, data.image_shape),
                                             os.path.join(cell_dir, "experts"))
            t = time.perf_counter()
            images = d3_objective_images(data, a.ipc, buffer, args.replace(lr_decoder=lr))
            result = evaluate(lambda _: fixed_source(images.images, images.labels), data, named_protocol("P-noaug"),
                              seeds=1)
            atomic_write_json(cell, {"dataset": a.dataset, "ipc": a.ipc, "lr": lr,
                                     "validation_accuracy": result["mean"],
                                     "seconds": round(time.perf_counter() - t, 1)})
        with open(cell) as f:
            print(json.dumps(json.load(f)), flush=True)


if __name__ == "__main__":
    main()
