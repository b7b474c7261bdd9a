"""Building a cell's training set once per (dataset, ipc_budget, method, seed): D3 artifacts and
image sets, named by the digest of the settings that decide them, locked while one stream makes
them, and kept in the tracked results (D3 weights, learned and selected image sets)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import shutil
import time

from .modes import D3_VARIANTS, FULL_EPOCHS, MATCHING_ROWS, MMD_ROWS, MMD_WHEN_DROPPED, PROTOTYPE_LR, REPO, Mode


@functools.lru_cache(maxsize=None)
def load_data(dataset: str):
    """The dataset, loaded once per process (the grid, its digests and the report share it)."""
    from d3hf.data.image_data import load_image_classification

    return load_image_classification(dataset)


def recipe_path(dataset: str, ipc: int) -> str:
    return os.path.join(REPO, "recipes", dataset, f"ipc{ipc}.yaml")


def matching_terms(dataset: str, ipc: int) -> frozenset[str]:
    """The terms the dataset's recipe at ``ipc`` matches with, of "mtt" and "mmd": none where its
    validation split chose the warm start alone, one where it dropped the other."""
    from d3hf.commands.distill import parse_distill_args

    m = parse_distill_args([recipe_path(dataset, ipc)]).matching
    if m.iterations == 0:
        return frozenset()
    return frozenset(term for term, weight in (("mtt", m.mtt_weight), ("mmd", m.mmd_weight)) if weight > 0)


def d3_arguments(data, dataset: str, ipc: int, method: str, seed: int, mode: Mode):
    """The recipe's settings (read as ``d3hf distill`` reads them) with the mode's and the
    variant's overrides (output_dir unset)."""
    from d3hf.commands.distill import parse_distill_args
    from d3hf.distill.runner import build_config
    from d3hf.errors import ConfigError

    recipe = parse_distill_args([recipe_path(dataset, ipc)])
    variant = dict(D3_VARIANTS[method])
    if method in MMD_ROWS and recipe.matching.mmd_weight == 0:
        variant = {**MMD_WHEN_DROPPED, **variant}
    # Variants of one dataset, budget and seed train identical experts: they share one buffer.
    buffer_dir = os.path.join(mode.cache, "experts", f"{dataset}_ipc{ipc}_seed{seed}")
    overrides = dict(mode.d3_overrides)
    if recipe.matching.iterations == 0:  # a mode shortens the matching; it does not add one the recipe chose against
        overrides.pop("iterations", None)
    args = recipe.replace(**overrides, seed=seed, eval_epochs=0, eval_every=0, buffer_dir=buffer_dir)
    if variant.get("decoder") == "half":
        width = build_config(args, data).decoder_specs()[0].channels[-1]
        if width < 2:
            raise NotApplicable(f"the recipe's decoder is {width} channel wide: there is no half")
        variant["decoder"] = str(width // 2)
    try:
        variant_args = args.replace(**variant)
    except ConfigError as err:  # e.g. the MMD-only row of a recipe without the MMD term: no term left
        raise NotApplicable(f"{variant} is not a valid run of this recipe: {err}") from None
    if method in MATCHING_ROWS:  # first: without a matching phase every such row computes the recipe
        _check_matches(args)
    if method != "d3" and resolved_settings(variant_args, data) == resolved_settings(args, data):
        raise NotApplicable(f"{variant} resolves to the recipe's own settings: the d3 row scores them")
    return variant_args


def _check_matches(recipe_args) -> None:
    """A row about the matching phase (one term alone, another start, prototype images) does not
    exist for a recipe whose validation split chose no matching phase."""
    if recipe_args.matching.iterations == 0:
        raise NotApplicable("the recipe has no matching phase (iterations: 0): there is no matching to vary")


def resolved_settings(args, data) -> dict:
    """What a distillation computes, with `auto` sizes resolved to what it builds: two runs with
    equal ones compute the same."""
    from d3hf.distill.runner import build_config

    config = build_config(args, data)
    return {**_computed_settings(args), "lpc": config.priors_per_class, "decoder": config.decoders,
            "z_dim": config.z_dim}


class NotApplicable(Exception):
    """A variant that does not exist at this dataset and budget (its cell is skipped)."""


def distill_arguments(data, dataset: str, ipc: int, method: str, seed: int, mode: Mode):
    """The distillation settings a D3-based method builds with; None for the other methods."""
    if method in D3_VARIANTS:
        return d3_arguments(data, dataset, ipc, method, seed, mode)
    if method == "d3-prototypes":
        args = d3_arguments(data, dataset, ipc, "d3", seed, mode)
        _check_matches(args)
        return args.replace(lr_decoder=PROTOTYPE_LR[dataset])
    return None


def baseline_settings(data, method: str, seed: int, mode: Mode) -> dict | None:
    """What decides a selected or learned baseline set besides its dataset, budget and seed; None
    for the sets nothing else decides (random real, all real, the external images)."""
    from d3hf.nn.networks import auto_depth

    from .. import baselines

    depth = auto_depth(data.image_shape)
    if method in ("herding", "kcenter"):
        return {"feature_epochs": mode.feature_epochs, "depth": depth}
    if method == "dm":
        return dataclasses.asdict(baselines.DMSettings(iterations=mode.dm_iterations, seed=seed, depth=depth))
    return None


def _digest(identity: dict) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]


def settings_digest(args) -> str:
    """A short hash of the settings that decide what a distillation computes (not where it keeps
    files or how often it logs)."""
    return _digest(_computed_settings(args))


def _computed_settings(args) -> dict:
    """The run's identity and iterations, without the settings it never reads (a recipe change to
    the matching leaves its warm-start and single-term cells scored) and without the settings
    added since the first release that are at the value meaning 'as before them', so adding a
    setting keeps every digest."""
    from d3hf.distill.config import ADDED_SETTINGS

    unread = args.unread_settings()
    identity = {k: v for k, v in args.run_identity().items()
                if k not in unread and (k not in ADDED_SETTINGS or v != ADDED_SETTINGS[k])}
    return {**identity, "iterations": args.matching.iterations}


def build_digest(data, dataset: str, ipc: int, method: str, seed: int, mode: Mode) -> str | None:
    """The digest that builds and cells carry, so a changed recipe or baseline setting is built and
    scored anew instead of read from a stale record; None for methods nothing but the seed decides."""
    args = distill_arguments(data, dataset, ipc, method, seed, mode)
    if args is not None:
        return settings_digest(args)
    if method == "full" and dataset in FULL_EPOCHS and mode.eval_epochs is None:
        return _digest({"epochs": FULL_EPOCHS[dataset]})  # another epoch count scores the bound anew
    settings = baseline_settings(data, method, seed, mode)
    return _digest(settings) if settings is not None else None


def build_name(dataset: str, ipc: int, method: str, seed: int, digest: str | None) -> str:
    return f"{dataset}_ipc{ipc}_{method}_seed{seed}" + (f"_{digest}" if digest else "")


class Busy(Exception):
    """Another live process is making this build or scoring this cell: left for a later run."""


@contextlib.contextmanager
def exclusive(path: str):
    """Hold ``path + '.lock'`` (holding our pid) while making a build or scoring a cell, so that
    parallel streams never do the same one twice; a lock whose process is gone (killed) is taken over."""
    lock = path + ".lock"
    os.makedirs(os.path.dirname(lock), exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            with open(lock) as f:
                holder = f.read().strip()
            if not holder or _alive(int(holder)):  # empty: its holder is writing its pid now
                raise Busy(f"{os.path.basename(path)} is in use by process {holder or '?'}") from None
            os.remove(lock)
    else:
        raise Busy(f"{os.path.basename(path)}: another process took the lock first")
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    try:
        yield
    finally:
        os.remove(lock)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


# What is kept of a D3 build beside the cell records: the artifact's weights and config and the
# run's summary (tens of kB): enough to score new cells from it on any machine, and the exact
# artifact behind every D3 number.
KEPT_ARTIFACT_FILES = ("config.json", "model.safetensors")


def keep_build(out: str, kept: str) -> None:
    """Copy a finished D3 build's artifact and summary from the cache into the tracked results."""
    from d3hf.distill.runner import ARTIFACT_DIR

    if os.path.exists(os.path.join(kept, "summary.json")):
        return
    _install({**{file: os.path.join(out, ARTIFACT_DIR, file) for file in KEPT_ARTIFACT_FILES},
              "summary.json": os.path.join(out, "summary.json")}, kept)


def _install(sources: dict[str, str], kept: str) -> None:
    """Copy ``sources`` (file name -> path) into the folder ``kept``, whole or not at all."""
    os.makedirs(kept + ".tmp", exist_ok=True)
    for name, source in sources.items():
        shutil.copyfile(source, os.path.join(kept + ".tmp", name))
    shutil.rmtree(kept, ignore_errors=True)
    os.replace(kept + ".tmp", kept)


def build_d3(data, dataset: str, ipc: int, method: str, seed: int, mode: Mode) -> tuple[str, dict]:
    """Distil with the dataset's recipe and the variant's settings (evaluation off), unless the
    build is in the cache or kept in the results; returns the artifact folder and facts. Builds are
    named by the settings' digest."""
    from d3hf.distill.runner import ARTIFACT_DIR, run_distillation

    args = d3_arguments(data, dataset, ipc, method, seed, mode)
    digest = settings_digest(args)
    name = build_name(dataset, ipc, method, seed, digest)
    out, kept = os.path.join(mode.cache, "builds", name), os.path.join(mode.cells_dir, "builds", name)
    artifact = os.path.join(out, ARTIFACT_DIR)
    if os.path.exists(os.path.join(artifact, "config.json")):
        keep_build(out, kept)
    elif os.path.exists(os.path.join(kept, "summary.json")):
        out = artifact = kept
    elif twin := kept_twin(mode, dataset, ipc, method, seed, digest):
        # Another row with the same settings made it: the same build, not made twice.
        _install({file: os.path.join(twin, file) for file in (*KEPT_ARTIFACT_FILES, "summary.json")}, kept)
        out = artifact = kept
    else:
        with exclusive(out):  # one stream at a time; the next resumes a killed run from its folder
            if not os.path.exists(os.path.join(artifact, "config.json")):  # unless one finished it meanwhile
                run_distillation(args.replace(output_dir=out), show_progress=True)
        keep_build(out, kept)
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    return artifact, {"storage_scalars": summary["ledger"]["total_scalars"],
                      "build_seconds": summary["timings"]["subtasks_s"], "ledger": summary["ledger"],
                      "per_subtask": summary["subtasks"]}


def kept_twin(mode: Mode, dataset: str, ipc: int, method: str, seed: int, digest: str) -> str | None:
    """A kept D3 build of another row than ``method`` with the same settings ``digest``: e.g. the
    MTT-only row's, once the recipe itself drops the MMD term."""
    for other in D3_VARIANTS:
        twin = os.path.join(mode.cells_dir, "builds", build_name(dataset, ipc, other, seed, digest))
        if other != method and os.path.exists(os.path.join(twin, "summary.json")):
            return twin
    return None


def build_image_set(data, dataset: str, method: str, ipc: int, seed: int, mode: Mode):
    """A fixed image set and its facts, as .npz: learned or selected sets are kept in the tracked
    results (minutes to make, at most 10 images per class), random and all-real ones in the cache."""
    import numpy as np
    import torch

    from d3hf.evaluation.image_sets import ImageSet

    folder = mode.cache if method in ("random", "full") else mode.cells_dir
    name = build_name(dataset, ipc, method, seed, build_digest(data, dataset, ipc, method, seed, mode))
    path = os.path.join(folder, "builds", name + ".npz")
    if not os.path.exists(path):
        with exclusive(os.path.join(mode.cache, "builds", name)):
            if not os.path.exists(path):  # another stream may have finished it before we took the lock
                t = time.perf_counter()
                images = _make_image_set(data, dataset, method, ipc, seed, mode)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                np.savez_compressed(path + ".tmp.npz", images=images.images.numpy(), labels=images.labels.numpy(),
                                    seconds=time.perf_counter() - t)
                os.replace(path + ".tmp.npz", path)
    with np.load(path) as npz:
        images = ImageSet(torch.from_numpy(npz["images"]), torch.from_numpy(npz["labels"]))
        return images, {"storage_scalars": images.storage_scalars, "build_seconds": float(npz["seconds"])}


def _make_image_set(data, dataset: str, method: str, ipc: int, seed: int, mode: Mode):
    import numpy as np
    import torch

    from d3hf.evaluation.image_sets import ImageSet, random_real_images

    from .. import baselines

    settings = baseline_settings(data, method, seed, mode)
    if method == "random":
        return random_real_images(data, ipc, seed)
    if method in ("herding", "kcenter"):
        # One network per (dataset, seed, settings) serves herding and k-center at every budget.
        kept = os.path.join(mode.cache, "feature_nets", f"{dataset}_seed{seed}_{_digest(settings)}.pt")
        net = baselines.train_feature_network(data, epochs=settings["feature_epochs"], seed=seed,
                                              depth=settings["depth"], cache_path=kept)
        return (baselines.herding_images if method == "herding" else baselines.k_center_images)(data, ipc, net)
    if method == "dm":
        return baselines.distribution_matching_images(data, ipc, baselines.DMSettings(**settings), show_progress=True)
    if method == "d3-prototypes":
        from d3hf.distill.experts import build_expert_buffer
        from d3hf.distill.runner import expert_settings

        args = distill_arguments(data, dataset, ipc, method, seed, mode)
        buffer = build_expert_buffer(data, expert_settings(args, data.image_shape), args.experts.buffer_dir)
        return baselines.d3_objective_images(data, ipc, buffer, args, show_progress=True)
    if method == "full":
        return ImageSet(data.images(np.arange(len(data.labels()))), torch.from_numpy(data.labels()))
    raise ValueError(method)
