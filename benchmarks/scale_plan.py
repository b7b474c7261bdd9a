"""What a recipe for a large dataset needs, before anyone runs it: per subtask, the memory of each
part on the accelerator (from d3hf's own rules: the plain unroll, step checkpointing, MMD chunks),
the storage ledger, and the time on this CPU, measured on generated data of the recipe's image
shape and extrapolated to the recipe's sizes. No GPU is needed, and none is measured.

    python benchmarks/scale_plan.py recipes/tiny_imagenet/ipc1.yaml --num_classes 200 \\
        --train_per_class 500 --device_gb 24
    python benchmarks/scale_plan.py recipes/imagenet64/ipc1.yaml --num_classes 1000 \\
        --train_per_class 1300 --device_gb 80

The time is one subtask of ``--measure_classes`` classes distilled by ``d3hf distill``'s runner
on this CPU (3 iterations, the last two timed; a short warm start; one expert trained for the
matched epochs on ``--measure_rows_per_class`` rows per class), then scaled: iterations linearly
in classes (both terms decode and train on every class), experts in rows, the warm start in
steps. The measurements and each recipe's record are kept (tracked) in
benchmarks/results/scale_plan/, one per (recipe settings, sizes), so the report is redrawn and the
memory plan (cheap, from the rules of the code that runs) redone without measuring again; the
generated data and runs are cached in benchmarks/cache/scale_plan/. The report is printed and
written to benchmarks/scale_plan.md (`python benchmarks/scale_plan.py` alone redraws it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)  # run as a file: the repo root

from benchmarks.cells import cached, records  # noqa: E402

GB = 1e9


def memory_plan(args, num_classes: int, shape: tuple[int, int, int], train_per_class: int, device_gb: float) -> dict:
    """The largest subtask's memory by part (bytes), from the rules the distiller applies."""
    import torch

    from d3hf.distill.budget import plan_subtasks
    from d3hf.distill.distiller import MMD_BYTES_PER_SCALAR, mmd_activation_scalars, plain_unroll_bytes
    from d3hf.distill.runner import resolve_partition
    from d3hf.modeling.configuration_d3 import D3Config
    from d3hf.modeling.modeling_d3 import D3Model
    from d3hf.modeling.storage import estimate_storage
    from d3hf.nn.networks import ConvNet, auto_depth

    rep, m, e = args.representation, args.matching, args.experts
    partition = resolve_partition(args, num_classes)
    plan = plan_subtasks(rep.ipc_budget, partition, shape, rep.z_dim, rep.decoder_value(), rep.lpc,
                         soft_labels=rep.soft_labels, family=rep.decoder_family)
    config = D3Config(class_names=[f"c{i}" for i in range(num_classes)], image_shape=list(shape), z_dim=plan.z_dim,
                      priors_per_class=plan.lpc, decoders=[s.to_dict() for s in plan.decoder_specs[:1]],
                      subtasks=None, normalization_mean=[0.5] * shape[0], normalization_std=[0.25] * shape[0])
    ledger = estimate_storage(D3Config(**{**config.to_dict(), "decoders": [s.to_dict() for s in plan.decoder_specs],
                                          "subtasks": partition}))
    n = max(len(p) for p in partition)
    depth = e.student_depth or auto_depth(shape)
    net = ConvNet(shape, n, depth, e.student_width)
    params = sum(p.numel() for p in net.parameters())
    device = device_gb * GB
    plain = plain_unroll_bytes(m, e.student_width, shape, n)
    value = str(m.checkpoint_steps).lower()
    recompute = plain > device / 4 if value == "auto" else value in ("1", "true", "yes", "on")
    # Recomputed: one step's graph at a time (a syn_steps-th of the plain unroll) plus the kept thetas.
    unroll = plain / m.syn_steps + m.syn_steps * params * 4 if recompute else plain
    with torch.device("meta"):
        model = D3Model(config)
    per_class = MMD_BYTES_PER_SCALAR * max(2, m.mmd_samples) * mmd_activation_scalars(model, net, shape)
    mmd_classes = m.mmd_classes_per_iter if 0 < m.mmd_classes_per_iter < n else n
    chunk = (min(mmd_classes, max(1, int(device / 4 // per_class))) if str(m.mmd_chunk_classes) == "auto"
             else min(mmd_classes, int(m.mmd_chunk_classes)))
    rows = n * train_per_class
    features = rows * net.feature_dim * 4
    kept_features = features if features <= args.run.memory_mb * 2**20 else 0  # else embedded per iteration
    decoded = rows * shape[0] * shape[1] * shape[2]
    snapshots = m.max_start_epoch + m.expert_epochs + 2  # epochs 0..max_start + expert_epochs, and the last
    return {
        "subtasks": len(partition), "classes_per_subtask": n, "rows_per_subtask": rows,
        "ipc_equivalent": ledger.ipc_equivalent, "total_scalars": ledger.total_scalars, "lpc": plan.lpc,
        "z_dim": plan.z_dim, "decoder_channels": plan.decoder_specs[0].to_dict().get("channels"),
        "decoder_spec": plan.decoder_specs[0].to_dict(),
        "student": f"ConvNet-{depth} width {e.student_width} ({params:,} parameters)",
        "unroll_plain_bytes": plain, "step_checkpointing": recompute, "unroll_bytes": unroll,
        "mmd_bytes_per_class": per_class, "mmd_chunk_classes": chunk, "mmd_bytes": chunk * per_class,
        "real_features_bytes": kept_features, "device_peak_bytes": kept_features + max(unroll, chunk * per_class),
        "decoded_train_bytes": decoded, "decoded_in_memory": decoded <= args.run.memory_mb * 2**20,
        "expert_buffer_bytes": e.num_experts * snapshots * params * (2 if e.expert_dtype == "float16" else 4),
    }


def measure(recipe: str, shape: tuple[int, int, int], classes: int, rows_per_class: int, cache: str,
            memory: dict) -> dict:
    """One subtask of ``classes`` classes on this CPU with the recipe's settings and the
    representation the recipe's subtasks get (``memory``: its decoder, priors per class and z_dim,
    and the step checkpointing the memory plan decided; the budget is raised to hold that decoder
    for fewer classes): seconds per iteration (the last two of three), per warm-start step and per
    expert row."""
    from benchmarks.synthetic import write_synthetic
    from d3hf.commands.distill import parse_distill_args
    from d3hf.distill.runner import run_distillation
    from d3hf.distill.tracking import read_metrics
    from d3hf.utils.environment import cpu_model

    data = write_synthetic(os.path.join(cache, f"data_{classes}x{rows_per_class}_{'x'.join(map(str, shape))}"),
                           shape, classes, rows_per_class, 2)
    args = parse_distill_args([recipe])
    m = args.matching
    warm_steps = 30
    out = os.path.join(cache, "runs", hashlib.sha256(f"{recipe}{shape}{classes}{rows_per_class}".encode()).hexdigest()[:12])
    spec = {k: v for k, v in memory["decoder_spec"].items() if k not in ("z_dim", "out_shape")}
    run = args.replace(dataset=data, test_split="test", image_size=None, channels="auto", num_subtasks=1,
                       subtasks=None, iterations=3, init_steps=warm_steps, num_experts=1,
                       expert_epochs_total=m.max_start_epoch + m.expert_epochs, expert_epoch_rows=0, eval_epochs=0,
                       eval_every=0, validation_size=0.0, log_every=1, checkpoint_every=0, report_to="none",
                       output_dir=out, overwrite_output_dir=True, mmd_chunk_classes="auto",
                       ipc_budget=args.representation.ipc_budget * memory["classes_per_subtask"] / classes,
                       decoder=json.dumps(spec), lpc=str(memory["lpc"]), z_dim=str(memory["z_dim"]),
                       checkpoint_steps=str(memory["step_checkpointing"]).lower())
    t = time.perf_counter()
    _, summary = run_distillation(run, show_progress=False)
    timings = summary["subtasks"][0]["timings"]
    seconds = [r["seconds"] for r in read_metrics(out) if r.get("phase") == "distill"]
    expert_rows = classes * rows_per_class * run.experts.expert_epochs_total
    with open(os.path.join(out, "artifact", "config.json")) as f:
        built = json.load(f)
    if built["decoders"][0]["channels"] != memory["decoder_channels"]:
        raise RuntimeError(f"measured with decoder {built['decoders'][0]['channels']}, planned "
                           f"{memory['decoder_channels']}")
    return {"classes": classes, "rows_per_class": rows_per_class, "decoder_channels": built["decoders"][0]["channels"],
            "lpc": built["priors_per_class"], "step_checkpointing": memory["step_checkpointing"],
            "s_per_iteration": statistics.mean(seconds[1:]),
            "s_per_warm_start_step": timings["warm_start_s"] / warm_steps,
            "s_per_expert_row": timings["experts_s"] / expert_rows, "wall_s": time.perf_counter() - t,
            "cpu": f"{cpu_model()}, {os.cpu_count()} threads"}


def time_text(cpu: dict, scale: float) -> str:
    """How the time was measured. Records made before the representation was pinned ran the
    smaller decoder their fewer classes got: their times are lower bounds."""
    if "lpc" not in cpu:
        return (f"- Time per subtask on {cpu['cpu']}, AT LEAST (measured at {cpu['classes']} classes with the "
                f"smaller decoder {cpu['classes']} classes get, iterations scaled x{scale:g}; the command above "
                "measures it with this recipe's decoder): ")
    return (f"- Time per subtask on {cpu['cpu']} (measured at {cpu['classes']} classes with this decoder, "
            f"{cpu['lpc']} priors per class and step checkpointing {'on' if cpu['step_checkpointing'] else 'off'}; "
            f"iterations scaled x{scale:g} for the classes): ")


def plan_text(name: str, record: dict) -> str:
    mem, cpu, a = record["memory"], record["cpu_measure"], record["settings"]
    scale = mem["classes_per_subtask"] / cpu["classes"]
    epoch_rows = a["expert_epoch_rows"] or mem["rows_per_subtask"]
    experts_s = cpu["s_per_expert_row"] * epoch_rows * a["expert_epochs_total"] * a["num_experts"]
    iteration_s = cpu["s_per_iteration"] * scale
    warm_s = cpu["s_per_warm_start_step"] * a["init_steps"]
    total_h = (experts_s + warm_s + iteration_s * a["iterations"]) / 3600
    gb = lambda b: f"{b / GB:.2f} GB"  # noqa: E731
    return "\n".join([
        f"## {name}", "",
        f"`{record['command']}`", "",
        f"- {mem['subtasks']} subtasks of up to {mem['classes_per_subtask']} classes, {mem['rows_per_subtask']:,} "
        f"train rows each; {mem['lpc']} prior(s) per class, z_dim {mem['z_dim']}, decoder channels "
        f"{mem['decoder_channels']}: {mem['total_scalars']:,} scalars, {mem['ipc_equivalent']:.3f} IPC-equivalent.",
        f"- Student {mem['student']}; the plain unroll would take {gb(mem['unroll_plain_bytes'])}: on a "
        f"{record['device_gb']:g} GB device step checkpointing is {'on' if mem['step_checkpointing'] else 'off'}, "
        f"unroll {gb(mem['unroll_bytes'])}.",
        f"- MMD: {gb(mem['mmd_bytes_per_class'])} per class, {mem['mmd_chunk_classes']} class(es) per chunk: "
        f"{gb(mem['mmd_bytes'])}. Real features kept on the device: {gb(mem['real_features_bytes'])}.",
        f"- **Device peak, estimated: {gb(mem['device_peak_bytes'])}** (real features + the larger of unroll and "
        f"MMD chunk, the two terms being backpropagated one after the other; not counted: CUDA's context, the "
        f"networks, optimiser states and gradients, all small beside these; the bytes per unit of the unroll and "
        f"the MMD term were measured on the CPU). Host: decoded train images "
        f"{gb(mem['decoded_train_bytes'])} ({'in memory' if mem['decoded_in_memory'] else 'memory-mapped file'}), "
        f"expert buffer {gb(mem['expert_buffer_bytes'])} on disk.",
        time_text(cpu, scale) + f"experts {experts_s / 3600:.2f} h, warm start {warm_s / 3600:.2f} h, "
        f"{iteration_s:.1f} s per iteration x {a['iterations']:,}: **{total_h:.1f} h per subtask on this CPU**. "
        "On a GPU: not measured.",
        ""])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recipe", nargs="?")
    p.add_argument("--num_classes", type=int)
    p.add_argument("--shape", default="3,64,64", help="C,H,W of the images the recipe distils")
    p.add_argument("--train_per_class", type=int)
    p.add_argument("--device_gb", type=float, default=24.0)
    p.add_argument("--measure_classes", type=int, default=10)
    p.add_argument("--measure_rows_per_class", type=int, default=100)
    p.add_argument("--out", default=HERE)
    a = p.parse_args(argv)
    cache = os.path.join(a.out, "cache", "scale_plan")
    kept = os.path.join(a.out, "results", "scale_plan")
    if a.recipe:
        from d3hf.commands.distill import parse_distill_args

        recipe = os.path.abspath(a.recipe)
        args = parse_distill_args([recipe])
        shape = tuple(int(v) for v in a.shape.split(","))
        settings = {k: v for k, v in args.to_dict().items() if k != "output_dir"}
        memory = memory_plan(args, a.num_classes, shape, a.train_per_class, a.device_gb)
        # What the measurement depends on: the settings, the shape and the representation it runs.
        key = hashlib.sha256(json.dumps([settings, shape, a.measure_classes, a.measure_rows_per_class,
                                         memory["classes_per_subtask"], memory["decoder_spec"], memory["lpc"],
                                         memory["z_dim"], memory["step_checkpointing"]], default=str).encode())
        name = os.path.relpath(recipe, REPO)
        cpu = cached(os.path.join(kept, "measure", f"{key.hexdigest()[:12]}.json"),
                     lambda: measure(recipe, shape, a.measure_classes, a.measure_rows_per_class, cache, memory))
        from d3hf.utils.io import atomic_write_json

        os.makedirs(os.path.join(kept, "records"), exist_ok=True)  # the memory plan is cheap: always redone
        atomic_write_json(os.path.join(kept, "records", f"{name.replace('/', '_')}.json"), {
            "recipe": name, "device_gb": a.device_gb, "settings": settings, "cpu_measure": cpu, "memory": memory,
            "command": f"python benchmarks/scale_plan.py {name} --num_classes {a.num_classes} --shape {a.shape} "
                       f"--train_per_class {a.train_per_class} --device_gb {a.device_gb:g}"})
    text = "\n".join(["# Recipes at scale: memory and time before the run", "",
                      "Memory from d3hf's own rules (estimates, not measurements on a GPU); time measured on this "
                      "CPU on generated data and scaled (see `benchmarks/scale_plan.py`).", ""]
                     + [plan_text(r["recipe"], r) for r in records(os.path.join(kept, "records"))])
    with open(os.path.join(a.out, "scale_plan.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
