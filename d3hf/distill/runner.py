"""``d3hf distill``: dataset -> experts -> distiller -> artifact -> evaluation."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import fields

import numpy as np
import torch
import yaml
from safetensors import SafetensorError

from ..data.image_data import ImageClassificationData, PixelMoments, load_image_classification
from ..errors import ConfigError, D3HFError
from ..hub.cards import save_artifact
from ..modeling.configuration_d3 import D3Config
from ..modeling.modeling_d3 import D3Model
from ..modeling.storage import estimate_storage
from ..nn.networks import auto_depth
from ..utils.allocator import release_memory
from ..utils.io import atomic_directory, atomic_write_json, remove_stale_temporaries
from ..utils.outputs import check_output, read_marker, write_marker
from ..utils.progress import run_progress
from .aggregation import aggregate, subtask_config
from .budget import BudgetError, plan_subtasks, subtask_overruns
from .callbacks import DistillCallback, fire
from .config import ADDED_SETTINGS, DataArguments, DistillArguments, defaults
from .curves import write_curves
from .distiller import CHECKPOINT_NAME, Distiller
from .experts import ExpertSettings, build_expert_buffer
from .layout import ARTIFACT_DIR, DATA_FILE, FINISHED_FILE, RUN_ENTRIES, RUN_FILE, SUBTASKS_DIR, SUMMARY_FILE
from .scheduler import SubtaskScheduler, default_store
from .subtasks import assigned_subtasks, check_partition, partition_classes, subtask_seed
from .tracking import RunTracker, last_values, read_metrics
from .warm_start import WarmStartSettings, warm_start

logger = logging.getLogger(__name__)



class RunConflictError(D3HFError, ValueError):
    """``output_dir`` holds a run with different settings."""


def load_data(data: DataArguments, seed: int) -> ImageClassificationData:
    """The run's dataset; with ``validation_size`` the evaluation split is carved from train."""
    loaded = load_image_classification(
        data.dataset,
        image_column=data.image_column,
        label_column=data.label_column,
        train_split=data.train_split,
        test_split=data.test_split,
        test_size=data.test_size,
        split_seed=seed,
        config_name=data.dataset_config,
        revision=data.dataset_revision,
        data_dir=data.data_dir,
        image_size=data.image_hw(),
        channels=data.channels,
    )
    return loaded.with_validation_split(data.validation_size, seed) if data.validation_size > 0 else loaded


def load_recorded_data(distillation: dict, dataset: str | None = None) -> ImageClassificationData:
    """The dataset, columns and split an artifact records in ``config.distillation`` (its flat
    settings), with ``dataset`` instead of the recorded one when given."""
    keys = {f.name: distillation[f.name] for f in fields(DataArguments) if f.name in distillation}
    if dataset is not None:
        keys["dataset"] = dataset
    return load_data(DataArguments(**keys), seed=distillation.get("seed", 0))


def resolve_partition(args: DistillArguments, num_classes: int) -> list[list[int]]:
    """The run's subtasks: the explicit ``subtasks`` list, or a balanced seeded partition."""
    rep = args.representation
    if rep.subtasks:
        groups = yaml.safe_load(rep.subtasks) if isinstance(rep.subtasks, str) else rep.subtasks
        if not isinstance(groups, list):
            raise ConfigError(f"subtasks must be a list of lists of class ids, e.g. [[0, 1], [2, 3]]; got {rep.subtasks!r}")
        return check_partition(groups, num_classes)
    return partition_classes(num_classes, rep.num_subtasks, args.run.seed)


def build_config(args: DistillArguments, data: ImageClassificationData,
                 partition: list[list[int]] | None = None) -> D3Config:
    """The whole artifact's config for this run; refuses a representation over ``ipc_budget``."""
    partition = partition if partition is not None else resolve_partition(args, data.num_classes)
    rep = args.representation
    plan = plan_subtasks(rep.ipc_budget, partition, data.image_shape, rep.z_dim, rep.decoder_value(), rep.lpc,
                         soft_labels=rep.soft_labels, family=rep.decoder_family)
    mean, std = data.normalization()
    config = D3Config(
        class_names=data.class_names,
        image_shape=list(data.image_shape),
        z_dim=plan.z_dim,
        priors_per_class=plan.lpc,
        decoders=[s.to_dict() for s in plan.decoder_specs],
        subtasks=partition,
        normalization_mean=mean,
        normalization_std=std,
        soft_labels=rep.soft_labels,
        source={**data.source_info, "num_train_rows": int(len(data.labels())), "train_fingerprint": data.fingerprint(),
                **_train_rows_record(data)},
        distillation=args.to_dict(),
    )
    ledger = estimate_storage(config)
    overruns = subtask_overruns(plan, partition, rep.ipc_budget, data.image_shape)
    if overruns or ledger.total_scalars > plan.budget_scalars:
        raise BudgetError(
            f"This representation needs {ledger.total_scalars:,} scalars; ipc_budget {rep.ipc_budget} allows "
            f"{plan.budget_scalars:,}, each subtask the share of its classes:\n" + "\n".join(overruns)
            + f"\n{ledger}\nLower lpc / z_dim / decoder width, use fewer subtasks, or raise ipc_budget."
        )
    return config


def _train_rows_record(data: ImageClassificationData) -> dict:
    """The distillation rows' ids (digest) for the test-overlap check of ``d3hf evaluate``, where
    the dataset names its rows (``source_row``); others are checked by fingerprint and pixels
    at evaluation time, so no process reads pixels it does not distil here."""
    from ..data.provenance import train_rows_record

    return train_rows_record(data) if "source_row" in data.train.column_names else {}


def expert_settings(args: DistillArguments, image_shape=None) -> ExpertSettings:
    """Expert settings of a run; ``student_depth`` 0 resolves from ``image_shape``."""
    return ExpertSettings(
        num_experts=args.experts.num_experts,
        epochs=args.experts.expert_epochs_total,  # covers every matched segment (checked with the settings)
        keep_epochs=args.matching.max_start_epoch + args.matching.expert_epochs,
        lr=args.experts.expert_lr,
        batch_size=args.experts.expert_batch_size,
        depth=args.experts.student_depth or auto_depth(image_shape),
        width=args.experts.student_width,
        dtype=args.experts.expert_dtype,
        seed=args.run.seed,
        epoch_rows=args.experts.expert_epoch_rows,
        augment=args.experts.expert_augment,
    )


def _check_run_dir(args: DistillArguments) -> str:
    """What ``output_dir`` allows, read-only: ``"new"`` (missing or empty), ``"resume"`` (this
    run, same settings) or ``"restart"`` (a d3hf run with other settings, and
    ``overwrite_output_dir``). Anything else is refused before any work."""
    path = args.run.output_dir
    run_file = os.path.join(path, RUN_FILE)
    is_run = os.path.isdir(path) and (os.path.exists(run_file) or (read_marker(path) or {}).get("kind") == "run")
    if not is_run:
        check_output(path, "run", flag="--overwrite_output_dir")  # a file, a foreign folder, the current directory
        return "new"
    previous = _read_json(run_file) if os.path.exists(run_file) else None
    if isinstance(previous, dict):  # a key added since that run was written had its first default there
        first = {**defaults(), **ADDED_SETTINGS}
        previous = {**{k: v for k, v in first.items() if k in args.run_identity()}, **previous}
    if previous == args.run_identity():
        return "resume"
    changed = sorted(k for k in set(previous or {}) | set(args.run_identity())
                     if (previous or {}).get(k) != args.run_identity().get(k))
    if not args.run.overwrite_output_dir:
        raise RunConflictError(
            f"{path} holds a run with different settings ({', '.join(changed) or 'unreadable'}). Use another "
            "output_dir, or pass --overwrite_output_dir to start over there."
        )
    foreign = sorted(set(os.listdir(path)) - set(RUN_ENTRIES))
    if foreign:
        raise RunConflictError(f"{path} holds files d3hf did not write ({', '.join(foreign)}); move them away "
                               "before starting over with --overwrite_output_dir.")
    return "restart"


def _clear_run_dir(path: str) -> None:
    """Remove what an earlier run wrote (``RUN_ENTRIES`` only; nothing else is there)."""
    import shutil

    logger.info("Starting over in %s (--overwrite_output_dir): removing the earlier run", path)
    for name in RUN_ENTRIES:
        entry = os.path.join(path, name)
        if os.path.isdir(entry) and not os.path.islink(entry):
            shutil.rmtree(entry)
        elif os.path.lexists(entry):
            os.remove(entry)


def subtask_arguments(args: DistillArguments, index: int, num_subtasks: int) -> DistillArguments:
    """The run's settings for one subtask: only the seed changes (a single task keeps the run seed)."""
    return args if num_subtasks == 1 else args.replace(seed=subtask_seed(args.run.seed, index))


def subtask_dir(args: DistillArguments, index: int) -> str:
    return os.path.join(args.run.output_dir, SUBTASKS_DIR, str(index))


def distill_subtask(
    args: DistillArguments,
    data: ImageClassificationData,
    config: D3Config,
    index: int,
    device: torch.device | str = "cpu",
    autocast=None,
    show_progress: bool = True,
    callbacks: Sequence[DistillCallback] = (),
    tracker: RunTracker | None = None,
) -> tuple[D3Model, dict]:
    """Distil subtask ``index`` of ``config`` on its own rows and experts, its records going to
    ``tracker`` (a ``metrics.jsonl`` in the subtask's folder, and the run's trackers).

    Resumes from the subtask's checkpoint; a subtask already finished for ``args.matching.iterations``
    is loaded from its artifact, not redone. Returns the subtask artifact (local class ids)
    and its timings.
    """
    started = time.perf_counter()
    workdir = subtask_dir(args, index)
    artifact_dir = os.path.join(workdir, ARTIFACT_DIR)
    finished = os.path.join(workdir, FINISHED_FILE)
    if os.path.exists(finished) and _read_json(finished)["iterations"] >= args.matching.iterations:
        try:
            model = D3Model.from_pretrained(artifact_dir)
            logger.info("Subtask %d: finished earlier, loaded %s", index, artifact_dir)
            return model, {"finished_earlier": True}
        except (OSError, ValueError, SafetensorError) as err:  # its files lost or cut short
            logger.warning("Subtask %d: finished earlier, but %s cannot be read (%s); distilling it again (from "
                           "its checkpoint when there is one)", index, artifact_dir, str(err).splitlines()[0])
    num_subtasks = len(config.subtasks)
    sub_args = subtask_arguments(args, index, num_subtasks)
    view = data.subset(config.subtasks[index])
    task = (tracker or RunTracker(args.run.output_dir, [])).task(index, workdir, args.run.log_every)
    callbacks = [task, *callbacks]  # first: a callback that stops the run finds this step recorded
    timings: dict = {}
    t = time.perf_counter()
    # Decoded once (in memory, or over memory_mb into a file beside the checkpoints), read by every phase below.
    if view.keep_train_in_memory(args.run.memory_mb * 2**20, workdir if args.run.memory_mb else None):
        timings["decode_s"] = time.perf_counter() - t
    # A run without a matching phase (iterations: 0, no curve, no soft labels) never reads experts:
    # none are trained. A checkpoint left by a matching run is resumed as before.
    needs_experts = uses_experts(args, config.soft_labels) or os.path.exists(os.path.join(workdir, CHECKPOINT_NAME))
    buffer = distiller = None
    if needs_experts:
        t = time.perf_counter()
        buffer = build_expert_buffer(view, expert_settings(sub_args, view.image_shape),
                                     _buffer_dir(args, index, num_subtasks, workdir), device=device,
                                     show_progress=show_progress, callbacks=callbacks,
                                     workers=args.run.expert_workers or torch.get_num_threads())
        timings["experts_s"] = time.perf_counter() - t
        timings["expert_buffer_bytes"] = buffer.size_on_disk()
        task.log_experts(buffer.history)  # those trained by an earlier, interrupted run too

    torch.manual_seed(sub_args.run.seed)
    part = D3Model(subtask_config(config, index)).to(device).train()
    resumed = False
    if buffer is not None:
        distiller = Distiller(part, view, buffer, sub_args.matching, seed=sub_args.run.seed, device=device,
                              autocast=autocast, callbacks=callbacks, memory_bytes=args.run.memory_mb * 2**20)
        resumed = distiller.load_checkpoint(workdir)
        task.resume_at(distiller.iteration)
    if resumed:
        logger.info("Subtask %d: resuming at iteration %d", index, distiller.iteration)
    elif sub_args.representation.init == "vae":
        timings.update(warm_start(part, view, WarmStartSettings(steps=sub_args.representation.init_steps,
                                                                seed=sub_args.run.seed), show_progress))
    if distiller is not None:
        _run_matching(distiller, view, task, args, sub_args.run.seed, workdir, device, timings, show_progress)
    part = part.cpu().eval()
    if config.soft_labels:
        _fit_soft_labels(part, buffer, view)
    with atomic_directory(artifact_dir) as tmp:
        save_artifact(part, tmp)
        write_marker(tmp, "artifact")
    atomic_write_json(finished, {"iterations": distiller.iteration if distiller is not None else 0})
    view.remove_decoded_file()
    timings["subtask_s"] = time.perf_counter() - started
    return part, timings


def uses_experts(args: DistillArguments, soft_labels: bool) -> bool:
    """Whether a subtask trains experts: to match their trajectories, to record the validation
    curve's trajectory-matching loss, or to fit soft labels."""
    return args.matching.iterations > 0 or args.evaluation.eval_every > 0 or soft_labels


def _run_matching(distiller: Distiller, view: ImageClassificationData, task, args: DistillArguments, seed: int,
                  workdir: str, device, timings: dict, show_progress: bool) -> None:
    """The matching phase, from the warm start or the checkpoint ``distiller`` resumed, with the
    validation curve when ``eval_every`` asks for one; its seconds go to ``timings``."""
    curve = None
    if args.evaluation.eval_every and view.test is not None:
        from .diagnostics import ValidationCurve

        curve = ValidationCurve(distiller, view, task, args.evaluation.eval_every, args.evaluation.eval_epochs,
                                args.evaluation.eval_num_per_class, _real_images_per_class(args), seed, device)
        distiller.callbacks.append(curve)
        curve.start()
    curve_before = curve.seconds if curve is not None else 0.0
    t = time.perf_counter()
    start_iteration = distiller.iteration
    distiller.run(args.matching.iterations, checkpoint_dir=workdir, checkpoint_every=args.run.checkpoint_every,
                  log_every=args.run.log_every, show_progress=show_progress)
    done = distiller.iteration - start_iteration
    timings["distill_s"] = time.perf_counter() - t
    if curve is not None:  # its points along the run are not distillation time
        timings["distill_s"] -= curve.seconds - curve_before
        timings["curve_s"] = curve.seconds
    timings["s_per_iteration"] = timings["distill_s"] / done if done else None
    timings.update({f"{k}_per_iteration": v for k, v in distiller.seconds_per_iteration().items()} if done else {})


def _buffer_dir(args: DistillArguments, index: int, num_subtasks: int, workdir: str) -> str:
    """Where subtask ``index`` keeps its experts: in its own folder, or under ``buffer_dir``
    (one sub-folder per subtask when there are several)."""
    if not args.experts.buffer_dir:
        return os.path.join(workdir, "experts")
    return os.path.join(args.experts.buffer_dir, str(index)) if num_subtasks > 1 else args.experts.buffer_dir


def _data_record(data: ImageClassificationData) -> dict:
    """What a resumed run must find again: the train rows (fingerprint) and the held-out split."""
    test = data.labels("test") if data.test is not None else np.zeros(0, np.int64)
    return {"train_fingerprint": data.fingerprint(), "test_split": data.source_info.get("test_split"),
            "test_rows": int(len(test))}


def _has_progress(args: DistillArguments, index: int) -> bool:
    """Whether this process sees a checkpoint or a finished artifact of subtask ``index``."""
    workdir = subtask_dir(args, index)
    return os.path.exists(os.path.join(workdir, FINISHED_FILE)) or os.path.exists(os.path.join(workdir, CHECKPOINT_NAME))


def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _gather(accelerator, items: list) -> list:
    """Every process's ``items``, concatenated in process order, on every process."""
    if accelerator is None or accelerator.num_processes == 1:
        return list(items)
    from accelerate.utils import gather_object

    return gather_object(items)


def _normalise_from_own_rows(data: ImageClassificationData, partition: list[list[int]], rank: int, world: int,
                             accelerator) -> None:
    """Train-split statistics from pixel sums that each process takes over its own subtasks'
    rows only; the sums are exact integers, so every process count gives the same values."""
    rows = [data.class_rows[c] for k in assigned_subtasks(len(partition), rank, world) for c in partition[k]]
    moments = data.pixel_moments(np.concatenate(rows) if rows else np.zeros(0, np.int64))
    data.set_normalization(sum(_gather(accelerator, [moments]), PixelMoments.zero(data.image_shape[0])))


def run_distillation(args: DistillArguments, accelerator=None, show_progress: bool = True,
                     callbacks: Sequence[DistillCallback] = ()) -> tuple[D3Model | None, dict]:
    """Distil every subtask this process is assigned, gather them on the main process, and
    there aggregate, evaluate and save ``OUTPUT_DIR/artifact``. Returns (model, summary) on
    the main process and (None, summary) elsewhere or when only some ``subtask_ids`` ran."""
    device = accelerator.device if accelerator is not None else torch.device("cpu")
    autocast = accelerator.autocast if accelerator is not None else None
    rank = accelerator.process_index if accelerator is not None else 0
    world = accelerator.num_processes if accelerator is not None else 1
    is_main = rank == 0
    original_output_dir = args.run.output_dir
    if "{process_index}" in args.run.output_dir:
        args = args.replace(output_dir=args.run.output_dir.format(process_index=rank))
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    # Every check before anything is written: a refused run leaves no files and removes none.
    run_dir_state = _check_run_dir(args)
    data = load_data(args.data, args.run.seed)
    loaded = _data_record(data)
    data_file = os.path.join(args.run.output_dir, DATA_FILE)
    then = _read_json(data_file) if run_dir_state == "resume" and os.path.exists(data_file) else loaded
    if then != loaded:
        raise RunConflictError(
            f"{args.run.output_dir} holds a run of other data than {args.data.dataset!r} loads today (train rows or "
            f"held-out split differ: {then} then, {loaded} now). Use another output_dir, or pass "
            "--overwrite_output_dir to start over there.")
    partition = resolve_partition(args, data.num_classes)
    wanted = _subtask_ids(args, len(partition))
    _normalise_from_own_rows(data, partition, rank, world, accelerator)
    config = build_config(args, data, partition)
    if is_main or "{process_index}" in original_output_dir:
        if run_dir_state == "restart":
            _clear_run_dir(args.run.output_dir)
        remove_stale_temporaries(args.run.output_dir)
    if accelerator is not None:
        accelerator.wait_for_everyone()  # no process writes before the folder is clean
    os.makedirs(args.run.output_dir, exist_ok=True)
    write_marker(args.run.output_dir, "run", RUN_ENTRIES)
    atomic_write_json(os.path.join(args.run.output_dir, RUN_FILE), args.run_identity())
    atomic_write_json(data_file, loaded)
    tracker = RunTracker(args.run.output_dir, args.run.trackers(), accelerator, args.to_dict(), device)
    if is_main:
        logger.info("%d subtask(s) %s on %d process(es); representation for ipc_budget %s:\n%s", len(partition),
                    partition, world, args.representation.ipc_budget, estimate_storage(config))

    # Largest subtasks first, so the last ones dealt are the short ones; a subtask whose checkpoint
    # only this process can see (per-process output folders) is its own first.
    rows = {k: sum(len(data.class_rows[c]) for c in partition[k]) for k in wanted}
    store = default_store() if world > 1 else None
    if world > 1 and store is None:
        raise ConfigError(f"{world} processes but no process group store to deal subtasks through; start the run "
                          "with accelerate launch (or torchrun).")
    scheduler = SubtaskScheduler(sorted(wanted, key=lambda k: (-rows[k], k)), rank, store,
                                 preferred=[k for k in wanted if _has_progress(args, k)])
    if world > 1:  # a subtask whose checkpoint only one process sees is that process's, before any dealing
        scheduler.reserve()
        accelerator.wait_for_everyone()
    evaluates = is_main and len(wanted) == len(partition) and data.test is not None
    if show_progress:  # this run's line is the only progress display: no "Writing model shards" bars
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    with (run_progress(_planned_phases(args, -(-len(wanted) // world), evaluates)) if show_progress
          else contextlib.nullcontext(), contextlib.closing(tracker)):
        local = []
        while (k := scheduler.claim()) is not None:
            try:
                part, sub_timings = distill_subtask(args, data, config, k, device, autocast, show_progress,
                                                    callbacks, tracker)
            except Exception:
                if not is_main:  # the main process would wait for it forever
                    import traceback

                    scheduler.publish_error(k, traceback.format_exc())
                raise
            state = {name: tensor.detach().cpu() for name, tensor in part.state_dict().items()}
            result = {"index": k, "classes": partition[k], "process": rank, "state": state, "timings": sub_timings}
            if is_main:
                local.append(result)
            else:
                scheduler.publish(k, result)
            del part, state, result
            release_memory()  # the next subtask starts from this one's live memory, not its peak
        timings["busy_s"] = time.perf_counter() - t0
        if not is_main:
            logger.info("Process %d: distilled subtask(s) %s; nothing left to claim", rank, scheduler.claimed)
            return None, {"subtasks": [{"index": k, "process": rank} for k in scheduler.claimed],
                          "timings": timings, "num_processes": world, "output_dir": args.run.output_dir}
        others = [k for k in wanted if k not in scheduler.claimed]
        results = sorted(local + (scheduler.collect(others) if others else []), key=lambda r: r["index"])
        timings["subtasks_s"] = time.perf_counter() - t0
        summary: dict = {"subtasks": [{k: v for k, v in r.items() if k != "state"} for r in results],
                         "timings": timings, "num_processes": world, "output_dir": args.run.output_dir,
                         "artifact_dir": os.path.join(args.run.output_dir, ARTIFACT_DIR)}
        if len(results) < len(partition):
            logger.info("Distilled subtasks %s; merge all subtasks with `d3hf aggregate`.", wanted)
            return None, summary

        for r in results:
            if r["process"] != rank:  # its records reached this process's service trackers only now
                tracker.replay(r["index"], subtask_dir(args, r["index"]))
        parts = []
        for r in results:
            part = D3Model(subtask_config(config, r["index"]))
            part.load_state_dict(r["state"])
            parts.append(part)
        model = aggregate(parts)
        summary["ledger"] = model.storage().to_dict()
        summary["expert_buffer_bytes"] = sum(r["timings"].get("expert_buffer_bytes", 0) for r in results)
        evaluation = _evaluate_after_distilling(model, data, args, timings, show_progress, device)
        if evaluation is not None:
            summary["evaluation"] = evaluation
            tracker.log_evaluation(evaluation)
        records = read_metrics(args.run.output_dir)
        curves = write_curves(args.run.output_dir, records=records)
        with atomic_directory(os.path.join(args.run.output_dir, ARTIFACT_DIR)) as tmp:
            save_artifact(model, tmp, evaluation, curves, last_values(records))
            write_marker(tmp, "artifact")
            fire(callbacks, "on_artifact_written", tmp)
        timings["total_s"] = time.perf_counter() - t0
        atomic_write_json(os.path.join(args.run.output_dir, SUMMARY_FILE), summary)
        return model, summary


def _planned_phases(args: DistillArguments, num_subtasks: int, evaluates: bool) -> list[tuple[str, int]]:
    """The phases this process will show, with their units (a resumed run corrects them as it goes)."""
    rep, ev = args.representation, args.evaluation
    experts = args.experts.num_experts * args.experts.expert_epochs_total if uses_experts(args, rep.soft_labels) else 0
    per_subtask = [("experts", experts),
                   ("warm start", rep.init_steps if rep.init == "vae" else 0), ("distill", args.matching.iterations)]
    # The final evaluation trains one network per seed on the artifact, then as many on random real images.
    evaluation = [("evaluate", ev.eval_epochs)] * (2 * ev.eval_seeds) if evaluates else []
    return per_subtask * num_subtasks + evaluation


def _subtask_ids(args: DistillArguments, num_subtasks: int) -> list[int]:
    """The subtasks to distil; their form was checked with the settings, their range is checked here."""
    ids = args.run.selected_subtasks()
    if ids is None:
        return list(range(num_subtasks))
    if ids[-1] >= num_subtasks:
        raise ConfigError(f"subtask_ids {args.run.subtask_ids!r} must lie in 0..{num_subtasks - 1}")
    return ids


def _real_images_per_class(args: DistillArguments) -> int:
    """Random real images per class that the run's references (final evaluation, curve) compare with."""
    return max(1, int(round(args.representation.ipc_budget)))


def _evaluate_after_distilling(model: D3Model, data: ImageClassificationData, args: DistillArguments,
                               timings: dict, show_progress: bool, device: torch.device) -> dict | None:
    """P-noaug accuracy of the artifact and of random real images at the same budget, trained on
    the run's device."""
    if args.evaluation.eval_epochs <= 0 or data.test is None:
        return None
    from ..evaluation.image_sets import random_real_images
    from ..evaluation.protocols import named_protocol
    from ..evaluation.training import evaluate, fixed_source, model_source

    t = time.perf_counter()
    model.to(device)  # its samples are decoded where the networks train
    # Through named_protocol, so a recipe's shorter training is written into the protocol's name.
    ev = args.evaluation
    protocol = named_protocol("P-noaug", epochs=ev.eval_epochs, num_per_class=ev.eval_num_per_class)
    d3 = evaluate(lambda s: model_source(model, protocol.num_per_class, s), data, protocol, ev.eval_seeds,
                  device=device, show_progress=show_progress)
    ipc = _real_images_per_class(args)
    real = evaluate(lambda s: fixed_source(*random_real_images(data, ipc, s)), data, protocol, ev.eval_seeds,
                    device=device, show_progress=show_progress)
    real["method"] = f"random real, {ipc} image(s) per class"
    d3["method"] = "d3hf artifact"
    model.cpu()
    timings["evaluate_s"] = time.perf_counter() - t
    return {"results": [d3, real], "protocol_text": protocol.describe(), "ipc_budget": args.representation.ipc_budget}


@torch.no_grad()
def _fit_soft_labels(model: D3Model, buffer, data: ImageClassificationData) -> None:
    """Soft labels: the final expert's softmax on each prior's mean image."""
    from .experts import expert_network

    teacher = expert_network(buffer, data)
    images, _ = model.mean_images()
    mean, std = data.normalization_tensors()
    model.soft_labels.copy_(teacher((images - mean) / std).softmax(-1))
