"""The d3hf benchmark: D3 against baselines at equal storage, on MNIST-5k and digits.

Every cell is one (dataset, ipc_budget, method, seed, protocol, arch): a training set is built
once per (dataset, ipc, method, seed) and cached (D3 artifacts as folders, image sets as .npz,
in benchmarks/cache/, not tracked), then a fresh network is trained on it and tested on the real
test split. Each result is a small JSON record in benchmarks/results/ (tracked in git), beside
the weights of every D3 build and the learned image sets (results/<grid>/builds/), so the grid
resumes where it stopped and can be completed over several runs, on several machines, without
distilling anything twice.

    python benchmarks/grid.py                 # the full grid (many hours on 2 CPU cores)
    python benchmarks/grid.py --quick         # digits, 1 seed, short runs: under 30 minutes
    python benchmarks/grid.py --datasets mnist5k --ipc 1 --methods d3,random --protocols P-noaug
    python benchmarks/grid.py --report-only   # rewrite the report from the recorded cells
    python benchmarks/grid.py --status        # what of the grid (or of a selection) is still missing

Streams can share the work (one torch thread each, the same selection or e.g. `--only-seeds 0,1`
and `--only-seeds 2`): a build or a cell is locked while one stream makes or scores it, and a cell
that is busy, or whose build is, is left for later. A killed cell's downstream training resumes
from its last checkpoint (saved each minute under results/<grid>/scoring/, git-ignored: force-add
a long cell's checkpoint to carry it to another checkout) in the next run.

Writes benchmarks/RESULTS.md (benchmarks/RESULTS-quick.md with --quick) and a PNG plot of
accuracy against storage budget beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import shutil
import sys
import time
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PEER_DIR = os.path.normpath(os.path.join(REPO, "..", "shared", "peer-baselines"))
# D3 and its ablations: settings laid over the dataset's recipe. "half-decoder" halves the
# recipe's decoder width and lets the priors per class fill the budget it frees (skipped where the
# width is already 1). "lpc1" stores one prior per class and the widest decoder that fits the rest,
# even where the recipe fixes the width; where the next width does not fit (MNIST-5k) the row is
# fewer modes at less storage (its ledger says how much).
D3_VARIANTS = {
    "d3": {},
    "d3-random-init": {"init": "random"},
    "d3-vae-only": {"iterations": 0},
    "d3-mtt-only": {"mmd_weight": 0.0},
    "d3-mmd-only": {"mtt_weight": 0.0},
    "d3-lpc1": {"lpc": "1", "decoder": "auto"},
    "d3-half-decoder": {"decoder": "half", "lpc": "auto"},  # the halved budget goes to priors
}
# Learned prototype images under D3's own MTT + MMD objective (same experts and settings as the
# recipe): the "distributional vs prototype images at equal storage" ablation. Pixels take Adam
# steps of this size, chosen per dataset on its validation split at ipc 1 (P-noaug, 1 seed;
# `python benchmarks/prototype_lr.py`, benchmarks/VALIDATION.md): digits 0.001 82.6 %, 0.01
# 84.7 %, 0.1 81.3 %; MNIST-5k 0.01 59.0 %, 0.03 63.75 %, 0.1 66.5 %, 0.3 66.5 %.
PROTOTYPE_LR = {"digits": 0.01, "mnist5k": 0.1}
FULL_IPC = 1  # the ipc_budget the all-real upper bound's cells are recorded under
ABLATIONS = (*[m for m in D3_VARIANTS if m != "d3"], "d3-prototypes")
METHODS = (*D3_VARIANTS, "d3-prototypes", "random", "herding", "kcenter", "dm", "peer", "full")
METHOD_NAMES = {"d3": "d3hf (D3)", "d3-random-init": "D3, random init (the reference's start)",
                "d3-vae-only": "D3 warm start only (VAE fit, no MTT/MMD)", "d3-mtt-only": "D3, MTT term only",
                "d3-mmd-only": "D3, MMD term only", "d3-lpc1": "D3, 1 prior per class (decoder as large as fits)",
                "d3-half-decoder": "D3, half-width decoder + more priors",
                "d3-prototypes": "prototype images, D3's MTT + MMD objective", "random": "random real",
                "herding": "herding", "kcenter": "k-center", "dm": "DM (in-project)", "peer": "DM (external images)",
                "full": "all real train images"}


@dataclasses.dataclass
class Mode:
    """What a run of the grid covers, and how long each piece trains."""

    name: str
    datasets: tuple[str, ...] = ("mnist5k", "digits")
    ipcs: tuple[int, ...] = (1, 10)
    methods: tuple[str, ...] = METHODS
    seeds: int = 3
    protocols: tuple[str, ...] = ("P-noaug", "P-dsa")
    archs: tuple[str, ...] = ("convnet", "resnet")
    d3_overrides: dict = dataclasses.field(default_factory=dict)
    dm_iterations: int = 100
    eval_epochs: int | None = None  # None: the protocol's own
    feature_epochs: int = 10  # of the network herding and k-center select in
    only_seeds: tuple[int, ...] | None = None  # of range(seeds): to split a run over parallel streams
    out: str = HERE

    @property
    def folder_name(self) -> str:
        return "grid" if self.name == "full" else f"grid-{self.name}"

    @property
    def cache(self) -> str:
        """Builds and expert buffers: large, re-creatable, not tracked."""
        return os.path.join(self.out, "cache", self.folder_name)

    @property
    def cells_dir(self) -> str:
        """One JSON record per scored cell: small, tracked, what the report is made from."""
        return os.path.join(self.out, "results", self.folder_name)

    @property
    def scoring_dir(self) -> str:
        """Checkpoints of downstream trainings in progress, one folder per cell; beside the records
        so that one of a cell too long for a session can be carried over in git (force-added)."""
        return os.path.join(self.cells_dir, "scoring")

    @property
    def report(self) -> str:
        return os.path.join(self.out, "RESULTS.md" if self.name == "full" else f"RESULTS-{self.name}.md")

    def protocol(self, name: str, arch: str):
        """The downstream protocol its cells under ``name`` and ``arch`` train with."""
        from d3hf.evaluation.training import named_protocol

        overrides = {"arch": arch} if self.eval_epochs is None else {"arch": arch, "epochs": self.eval_epochs}
        return named_protocol(name, **overrides)


QUICK = Mode(name="quick", datasets=("digits",), methods=("d3", "d3-random-init", "d3-vae-only", "d3-mtt-only",
                                                           "d3-mmd-only", "d3-prototypes", "random", "herding",
                                                           "kcenter", "dm"), seeds=1,
             protocols=("P-noaug",), archs=("convnet",), d3_overrides={"iterations": 100, "num_experts": 5},
             dm_iterations=50, eval_epochs=100)
# For the test suite: every code path of the grid in seconds.
SMOKE = Mode(name="smoke", datasets=("digits",), ipcs=(10,),
             methods=("d3", "d3-mmd-only", "d3-prototypes", "random", "herding", "dm"),
             seeds=1,
             protocols=("P-noaug",), archs=("convnet",), dm_iterations=2, eval_epochs=2, feature_epochs=1,
             d3_overrides={"iterations": 2, "num_experts": 1, "expert_epochs_total": 3, "max_start_epoch": 1,
                           "expert_epochs": 1, "syn_steps": 2, "student_width": 8, "decoder": "2", "num_threads": 0,
                           "init_steps": 20})


BASE_MODES = {"full": Mode(name="full"), "quick": QUICK, "smoke": SMOKE}


# ----------------------------------------------------------------------------- building training sets


@functools.lru_cache(maxsize=None)
def load_data(dataset: str):
    """The dataset, loaded once per process (the grid, its digests and the report share it)."""
    from d3hf.data.image_data import load_image_classification

    return load_image_classification(dataset)


def d3_arguments(data, dataset: str, ipc: int, method: str, seed: int, mode: Mode):
    """The recipe's settings (read as ``d3hf distill`` reads them) with the mode's and the
    variant's overrides (output_dir unset)."""
    from d3hf.commands.cli import parse_distill_args
    from d3hf.distill.runner import build_config
    from d3hf.errors import ConfigError

    recipe = parse_distill_args([os.path.join(REPO, "recipes", dataset, f"ipc{ipc}.yaml")])
    variant = dict(D3_VARIANTS[method])
    # Variants of one dataset, budget and seed train identical experts: they share one buffer.
    buffer_dir = os.path.join(mode.cache, "experts", f"{dataset}_ipc{ipc}_seed{seed}")
    args = dataclasses.replace(recipe, **mode.d3_overrides, seed=seed, eval_epochs=0, buffer_dir=buffer_dir)
    if variant.get("decoder") == "half":
        width = build_config(args, data).decoder_specs()[0].channels[-1]
        if width < 2:
            raise NotApplicable(f"the recipe's decoder is {width} channel wide: there is no half")
        variant["decoder"] = str(width // 2)
    try:
        variant_args = dataclasses.replace(args, **variant)
    except ConfigError as err:  # e.g. the MMD-only row of a recipe without the MMD term: no term left
        raise NotApplicable(f"{variant} is not a valid run of this recipe: {err}") from None
    if method != "d3" and resolved_settings(variant_args, data) == resolved_settings(args, data):
        raise NotApplicable(f"{variant} resolves to the recipe's own settings: the d3 row scores them")
    return variant_args


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
        return dataclasses.replace(d3_arguments(data, dataset, ipc, "d3", seed, mode), lr_decoder=PROTOTYPE_LR[dataset])
    return None


def baseline_settings(data, method: str, seed: int, mode: Mode) -> dict | None:
    """What decides a selected or learned baseline set besides its dataset, budget and seed; None
    for the sets nothing else decides (random real, all real, the external images)."""
    from d3hf.evaluation import image_sets as baselines
    from d3hf.nn.networks import auto_depth

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
    return {**args.run_identity(), "iterations": args.iterations}


def build_digest(data, dataset: str, ipc: int, method: str, seed: int, mode: Mode) -> str | None:
    """The digest that builds and cells carry, so a changed recipe or baseline setting is built and
    scored anew instead of read from a stale record; None for methods nothing but the seed decides."""
    args = distill_arguments(data, dataset, ipc, method, seed, mode)
    if args is not None:
        return settings_digest(args)
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
    os.makedirs(kept + ".tmp", exist_ok=True)
    for name in KEPT_ARTIFACT_FILES:
        shutil.copyfile(os.path.join(out, ARTIFACT_DIR, name), os.path.join(kept + ".tmp", name))
    shutil.copyfile(os.path.join(out, "summary.json"), os.path.join(kept + ".tmp", "summary.json"))
    shutil.rmtree(kept, ignore_errors=True)
    os.replace(kept + ".tmp", kept)


def build_d3(data, dataset: str, ipc: int, method: str, seed: int, mode: Mode) -> tuple[str, dict]:
    """Distil with the dataset's recipe and the variant's settings (evaluation off), unless the
    build is in the cache or kept in the results; returns the artifact folder and facts. Builds are
    named by the settings' digest."""
    from d3hf.distill.runner import ARTIFACT_DIR, run_distillation

    args = d3_arguments(data, dataset, ipc, method, seed, mode)
    name = build_name(dataset, ipc, method, seed, settings_digest(args))
    out, kept = os.path.join(mode.cache, "builds", name), os.path.join(mode.cells_dir, "builds", name)
    artifact = os.path.join(out, ARTIFACT_DIR)
    if os.path.exists(os.path.join(artifact, "config.json")):
        keep_build(out, kept)
    elif os.path.exists(os.path.join(kept, "summary.json")):
        out = artifact = kept
    else:
        with exclusive(out):  # one stream at a time; the next resumes a killed run from its folder
            if not os.path.exists(os.path.join(artifact, "config.json")):  # unless one finished it meanwhile
                run_distillation(dataclasses.replace(args, output_dir=out), show_progress=True)
        keep_build(out, kept)
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    return artifact, {"storage_scalars": summary["ledger"]["total_scalars"],
                      "build_seconds": summary["timings"]["subtasks_s"], "ledger": summary["ledger"],
                      "per_subtask": summary["subtasks"]}


def build_image_set(data, dataset: str, method: str, ipc: int, seed: int, mode: Mode):
    """A fixed image set and its facts, as .npz: learned or selected sets are kept in the tracked
    results (minutes to make, at most 10 images per class), random and all-real ones in the cache."""
    import numpy as np
    import torch

    from d3hf.evaluation import image_sets as baselines

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
        images = baselines.ImageSet(torch.from_numpy(npz["images"]), torch.from_numpy(npz["labels"]))
        return images, {"storage_scalars": images.storage_scalars, "build_seconds": float(npz["seconds"])}


def _make_image_set(data, dataset: str, method: str, ipc: int, seed: int, mode: Mode):
    import numpy as np
    import torch

    from d3hf.evaluation import image_sets as baselines

    settings = baseline_settings(data, method, seed, mode)
    if method == "random":
        return baselines.random_real_images(data, ipc, seed)
    if method in ("herding", "kcenter"):
        net = baselines.train_feature_network(data, epochs=settings["feature_epochs"], seed=seed,
                                              depth=settings["depth"])
        return (baselines.herding_images if method == "herding" else baselines.k_center_images)(data, ipc, net)
    if method == "dm":
        return baselines.distribution_matching_images(data, ipc, baselines.DMSettings(**settings), show_progress=True)
    if method == "d3-prototypes":
        from d3hf.distill.experts import build_expert_buffer
        from d3hf.distill.runner import expert_settings

        args = distill_arguments(data, dataset, ipc, method, seed, mode)
        buffer = build_expert_buffer(data, expert_settings(args, data.image_shape), args.buffer_dir)
        return baselines.d3_objective_images(data, ipc, buffer, args, show_progress=True)
    if method == "full":
        return baselines.ImageSet(data.images(np.arange(len(data.labels()))), torch.from_numpy(data.labels()))
    raise ValueError(method)


# ----------------------------------------------------------------------------- one cell


def cell_name(dataset: str, ipc: int, method: str, seed: int, protocol: str, arch: str) -> str:
    return f"{dataset}_ipc{ipc}_{method}_seed{seed}_{protocol}_{arch}"


def run_cell(data, dataset: str, ipc: int, method: str, seed: int, protocol_name: str, arch: str, mode: Mode,
             checkpoint_dir: str | None = None) -> dict:
    """Build (or find) the cell's training set and score it; the downstream training resumes from
    ``checkpoint_dir`` (one per cell and settings digest) when a killed run left it there."""
    from d3hf.evaluation import image_sets as baselines
    from d3hf.evaluation.training import evaluate, fixed_source, model_source
    from d3hf.modeling.modeling_d3 import D3Model

    protocol = mode.protocol(protocol_name, arch)
    if method in D3_VARIANTS:
        artifact, facts = build_d3(data, dataset, ipc, method, seed, mode)
        model = D3Model.from_pretrained(artifact)
        make_source = lambda s: model_source(model, protocol.num_per_class, s)  # noqa: E731
    elif method == "peer":
        images = baselines.load_image_set(os.path.join(PEER_DIR, f"dm_{dataset}_ipc{ipc}.npz"))
        facts = {"storage_scalars": images.storage_scalars, "build_seconds": 0.0}
        make_source = lambda s: fixed_source(images.images, images.labels)  # noqa: E731
    else:
        images, facts = build_image_set(data, dataset, method, ipc, seed, mode)
        make_source = lambda s: fixed_source(images.images, images.labels)  # noqa: E731
    t = time.perf_counter()
    # The evaluation seed is the build seed: one downstream network per built set.
    result = evaluate(lambda _: make_source(seed), data, protocol, seeds=1, show_progress=True,
                      checkpoint_dir=checkpoint_dir)
    before = result["seconds_before_resume"][0]
    # A resumed training counts the seconds it ran before, up to its last checkpoint.
    resumed = {"resumed_from_epoch": result["resumed_from_epochs"][0], "seconds_before_resume": before} \
        if before else {}
    if "checkpointed_on" in result:  # the checkpoint resumed from was made on another machine
        resumed["checkpointed_on"] = result["checkpointed_on"]
    drawn = {"prior_draw": PRIOR_DRAW} if method in D3_VARIANTS else {}
    return {"dataset": dataset, "ipc_budget": ipc, "method": method, "seed": seed, "protocol": protocol.name,
            "arch": arch, "accuracy": result["accuracies"][0], "notes": result["notes"], **drawn,
            "eval_seconds": time.perf_counter() - t + before, **resumed, **facts}


def cells(mode: Mode):
    for dataset in mode.datasets:
        for ipc in mode.ipcs:
            for method in mode.methods:
                if method == "peer" and not os.path.exists(os.path.join(PEER_DIR, f"dm_{dataset}_ipc{ipc}.npz")):
                    continue
                # The upper bound does not depend on the budget: scored once per dataset, whichever
                # budgets this run covers, and recorded under FULL_IPC.
                if method == "full" and ipc != mode.ipcs[0]:
                    continue
                key_ipc = FULL_IPC if method == "full" else ipc
                seeds = 1 if method in ("peer", "full") else mode.seeds
                # Ablations run under the first protocol and architecture only (P-noaug, ConvNet).
                ablation = method in ABLATIONS
                for seed in range(seeds):
                    if mode.only_seeds is not None and seed not in mode.only_seeds:
                        continue
                    for protocol in mode.protocols[:1] if ablation else mode.protocols:
                        for arch in mode.archs[:1] if ablation else mode.archs:
                            yield dataset, key_ipc, method, seed, protocol, arch


def run_grid(mode: Mode, max_minutes: float | None) -> None:
    os.makedirs(mode.cells_dir, exist_ok=True)
    start = time.perf_counter()
    for key in cells(mode):
        dataset, ipc, method, seed = key[:4]
        path = os.path.join(mode.cells_dir, cell_name(*key) + ".json")
        skipped = path.removesuffix(".json") + SKIPPED
        try:
            digest = build_digest(load_data(dataset), dataset, ipc, method, seed, mode)
        except NotApplicable as e:
            print(f"{cell_name(*key)}: skipped, {e}", file=sys.stderr)
            _write_json(skipped, {"skipped": str(e)})
            if os.path.exists(path):  # scored when the recipe still had the variant
                os.remove(path)
            continue
        if _scored(path, digest):
            continue
        if os.path.exists(path):
            with open(path) as f:
                earlier_draw = json.load(f).get("prior_draw") == EARLIER_PRIOR_DRAW
            why = "it was scored under the earlier prior draw" if earlier_draw else "the recipe changed since it was scored"
            print(f"{cell_name(*key)}: {why}; scoring anew", file=sys.stderr)
        if max_minutes is not None and time.perf_counter() - start > 60 * max_minutes:
            print(f"stopping after {max_minutes} minutes; run again to continue", file=sys.stderr)
            return
        # Where a killed run of this cell left its downstream training: resumed from, not restarted.
        scoring = os.path.join(mode.scoring_dir, cell_name(*key) + (f"_{digest}" if digest else ""))
        t = time.perf_counter()
        try:
            with exclusive(scoring):
                if _scored(path, digest):  # by another stream, since this one looked
                    continue
                result = run_cell(load_data(dataset), *key, mode, checkpoint_dir=scoring)
                result["cell_seconds"] = time.perf_counter() - t + result.get("seconds_before_resume", 0.0)
                result["settings_digest"] = digest
                result["machine"] = machine()
                _write_json(path, result)
        except Busy as e:
            print(f"{cell_name(*key)}: left for a later run, {e}", file=sys.stderr)
            continue
        shutil.rmtree(scoring, ignore_errors=True)
        if os.path.exists(skipped):  # the variant exists again
            os.remove(skipped)
        print(f"{cell_name(*key)}: {100 * result['accuracy']:.2f} % ({result['cell_seconds']:.0f} s)", file=sys.stderr)


# How D3Model.draw gave the downstream network its samples when a record was scored: the records
# marked "cyclic" (sample j of a class always took prior j mod lpc, so with 20 samples and 16
# priors the first 4 took two samples every epoch) are shown, counted, and scored anew by the
# next run; cells scored since carry PRIOR_DRAW.
PRIOR_DRAW = "balanced"
EARLIER_PRIOR_DRAW = "cyclic"


def _scored(path: str, digest: str | None) -> bool:
    """Whether the record at ``path`` exists, was scored under ``digest`` and not under an
    earlier prior draw."""
    if not os.path.exists(path):
        return False
    with open(path) as f:
        record = json.load(f)
    return record.get("settings_digest") == digest and record.get("prior_draw") != EARLIER_PRIOR_DRAW


# ----------------------------------------------------------------------------- report


SKIPPED = ".skipped.json"  # the record of a cell that does not exist (NotApplicable), with the reason


def _write_json(path: str, record: dict) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=2)
    os.replace(path + ".tmp", path)


def load_results(mode: Mode) -> list[dict]:
    """Every scored cell's record."""
    folder = mode.cells_dir
    if not os.path.isdir(folder):
        return []
    results = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".json") and not name.endswith(SKIPPED):
            with open(os.path.join(folder, name)) as f:
                results.append(json.load(f))
    return results


def split_stale(mode: Mode, results: list[dict]) -> tuple[list[dict], list[dict]]:
    """The records scored under the settings the recipes and ``mode`` give now, and the stale rest
    (a recipe or baseline setting changed since): the report leaves those out until re-scored."""
    digests: dict = {}
    current, stale = [], []
    for r in results:
        key = (r["dataset"], r["ipc_budget"], r["method"], r["seed"])
        if key not in digests:
            try:
                digests[key] = build_digest(load_data(key[0]), *key, mode)
            except NotApplicable:
                digests[key] = "not applicable"
        (current if r.get("settings_digest") == digests[key] else stale).append(r)
    return current, stale


def coverage(mode: Mode, results: list[dict] | None = None) -> list[str]:
    """How much of the grid ``mode`` defines is scored under the current settings (``results``:
    the current records, read and checked when not given), and what is missing, as report lines."""
    if results is None:
        results = split_stale(mode, [r for r in load_results(mode) if r["dataset"] in mode.datasets])[0]
    # A record's protocol may carry the mode's overrides ("P-noaug[epochs=100]"); file names do not.
    done = {cell_name(r["dataset"], r["ipc_budget"], r["method"], r["seed"], r["protocol"].split("[")[0],
                      r["arch"]) + ".json" for r in results if r.get("prior_draw") != EARLIER_PRIOR_DRAW}
    if os.path.isdir(mode.cells_dir):
        done |= {name for name in os.listdir(mode.cells_dir) if name.endswith(SKIPPED)}
    groups: dict = {}
    skipped = 0
    for key in cells(mode):
        name = cell_name(*key)
        if name + SKIPPED in done:
            skipped += 1
            continue
        group = groups.setdefault(key[:3], [0, 0])
        group[0] += name + ".json" in done
        group[1] += 1
    scored, total = sum(g[0] for g in groups.values()), sum(g[1] for g in groups.values())
    lines = ["### Coverage", "",
             f"{scored} of the {total} cells this grid defines are scored under the current settings and prior draw"
             + (f", besides {skipped} that do not exist (variants that do not apply at their budget)" if skipped else "")
             + f". Seeds {mode.seeds}; protocols {', '.join(mode.protocols)}; architectures {', '.join(mode.archs)} "
             "(ablations under the first of each only).", ""]
    missing = [(k, g) for k, g in groups.items() if g[0] < g[1]]
    if missing:
        lines += ["| dataset | ipc_budget | method | scored | cells |", "|---|---:|---|---:|---:|"]
        lines += [f"| {d} | {i} | {METHOD_NAMES[m]} | {g[0]} | {g[1]} |" for (d, i, m), g in sorted(
            missing, key=lambda item: (item[0][0], item[0][1], METHODS.index(item[0][2])))]
    return lines + [""]


def summarise(results: list[dict]) -> dict:
    """(dataset, protocol, arch, method, ipc) -> (mean, std, n, storage)."""
    import numpy as np

    groups: dict = {}
    for r in results:
        key = (r["dataset"], r["protocol"], r["arch"], r["method"], r["ipc_budget"])
        groups.setdefault(key, []).append(r)
    out = {}
    for key, rs in groups.items():
        acc = np.array([r["accuracy"] for r in rs])
        out[key] = {"mean": float(acc.mean()), "std": float(acc.std()), "n": len(rs),
                    "storage": int(np.mean([r["storage_scalars"] for r in rs]))}
    return out


def write_report(mode: Mode, command: str) -> str:
    """RESULTS.md from every cached cell of this mode (also cells of earlier, wider runs)."""
    from d3hf.evaluation.training import FIXED_SET_TRAINING
    from d3hf.utils.environment import describe

    results, stale = split_stale(mode, load_results(mode))
    summary = summarise(results)
    timed = [r["cell_seconds"] for r in results if r.get("cell_seconds") is not None]
    recovered = sorted({r["recovered_from"] for r in results if "recovered_from" in r})
    datasets = [d for d in ("mnist5k", "digits") if any(r["dataset"] == d for r in results)]
    ipcs = sorted({r["ipc_budget"] for r in results})
    methods = [m for m in METHODS if any(r["method"] == m for r in results)]
    machines = Counter(_machine_text(r["machine"]) for r in results if "machine" in r)
    lines = [f"# d3hf benchmark{'' if mode.name == 'full' else f' ({mode.name} mode)'}", "",
             "## The grid: D3 and baselines at equal storage", "",
             f"Command: `{command}`. Machines: {os.cpu_count()} CPU cores, no GPU, torch {_torch_version()}; "
             "each cell's CPU is named below and in the Cells table.", "",
             f"- Cells: {len(results)}, one JSON record each in `{_rel(mode.cells_dir)}/`, tracked, with the weights "
             "of the D3 builds and the learned image sets in its `builds/`; the untracked "
             f"`{_rel(mode.cache)}/` holds the rest (D3 run folders with experts and checkpoints, random and all-real "
             "sets).",
             *[f"- {n} scored on {text}." for text, n in sorted(machines.items())],
             *[f"- {sum(r.get('recovered_from') == source for r in results)} recovered from {source} "
               "(`benchmarks/recover_cells.py`): scored on an earlier machine that was not recorded; their build and "
               "evaluation seconds were kept, their cell time was not." for source in recovered],
             *([f"- Cell time: {sum(timed) / 60:.1f} min over the {len(timed)} cells timed whole."] if timed else []),
             *([f"- Left out: {len(stale)} records scored under settings that have changed since (a recipe or a "
                "baseline setting); the grid scores those cells anew."] if stale else []),
             *([f"- {cyclic} D3 cells were scored under the earlier prior draw (sample j of a class took prior j mod "
                "lpc in every epoch, so where 20 samples do not divide evenly over the priors the first ones took one "
                "sample more every epoch; marked * in the Cells table); the grid scores them anew."]
               if (cyclic := sum(r.get("prior_draw") == EARLIER_PRIOR_DRAW for r in results)) else []),
             "",
             "Accuracy is the FINAL-epoch accuracy on the real test split of a freshly trained network, mean +- std "
             "over the seeds in brackets (each seed builds its own training set and trains its own network). Every "
             "method at an `ipc_budget` stores at most `ipc_budget x classes x C x H x W` scalars (D3: decoders + "
             "priors; image sets: pixels); the storage column is the measured mean. At `ipc_budget` 1 herding and "
             "k-center keep the same image per class by construction (both start from the train image whose "
             "features are nearest the class mean), so their rows agree there.", ""]
    # The grid the mode defines, not the selection this run was narrowed to (--methods full must not
    # drop the ablation rows from the report).
    grid_mode = dataclasses.replace(BASE_MODES.get(mode.name, mode), out=mode.out)
    lines += _at_a_glance(summary, datasets, ipcs, grid_mode.methods)
    for dataset in datasets:
        for protocol in sorted({k[1] for k in summary if k[0] == dataset}):
            for arch in sorted({k[2] for k in summary if k[0] == dataset and k[1] == protocol}):
                rows = {k: v for k, v in summary.items() if k[:3] == (dataset, protocol, arch)}
                panel = [r for r in results if (r["dataset"], r["protocol"], r["arch"]) == (dataset, protocol, arch)]
                # Said as for the artifacts; the image sets' rows differ only in what they train on.
                notes = next((r for r in panel if r["method"] in D3_VARIANTS), panel[0])["notes"]
                fixed = any(r["method"] not in D3_VARIANTS for r in panel)
                lines += [f"### {dataset}, {protocol}, {arch}", "", f"Protocol: {notes}.", "",
                          *([f"Image sets (the rows other than D3's) train on {FIXED_SET_TRAINING}.", ""] if fixed
                            else []),
                          "| method | " + " | ".join(f"ipc_budget {i}" for i in ipcs) + " | storage (scalars) |",
                          "|---|" + "---:|" * (len(ipcs) + 1)]
                for method in methods:
                    cells_ = [rows.get((dataset, protocol, arch, method, i)) for i in ipcs]
                    if not any(cells_):
                        continue
                    text = [_accuracy(c) if c else "-" for c in cells_]
                    storage = " / ".join(f"{c['storage']:,}" for c in cells_ if c)
                    lines.append(f"| {METHOD_NAMES[method]} | " + " | ".join(text) + f" | {storage} |")
                lines.append("")
    if not results:
        lines += ["No grid cell has been run yet: `python benchmarks/grid.py` (resumable) fills this section.", ""]
    lines += _verdicts(summary, with_targets=TARGET_PANEL[0] in grid_mode.datasets)
    lines += coverage(grid_mode, results)
    lines += _ledger(results)
    lines += ["### Cells", "", "Build s: making the cell's training set (one build serves every protocol and "
              "architecture of its seed; each of their rows shows its seconds); eval s: the cell's downstream "
              "training; cell s: the cell's wall time as run, which holds the build's seconds only where the cell "
              "made the build, not where it found it made (not recorded for recovered cells).", "",
              "| cell | accuracy | build s | eval s | cell s | CPU |", "|---|---:|---:|---:|---:|---|"]
    for r in results:
        cpu = r["machine"]["cpu"] if "machine" in r else "not recorded"
        if r.get("checkpointed_on"):  # resumed from a downstream training begun on another machine
            cpu += " (resumed from " + "; ".join(describe(e) for e in r["checkpointed_on"]) + ")"
        cell_s = f"{r['cell_seconds']:.0f}" if r.get("cell_seconds") is not None else "-"
        mark = " *" if r.get("prior_draw") == EARLIER_PRIOR_DRAW else ""
        lines.append(f"| {cell_name(r['dataset'], r['ipc_budget'], r['method'], r['seed'], r['protocol'], r['arch'])}"
                     f"{mark} "
                     f"| {100 * r['accuracy']:.2f} % | {r['build_seconds']:.0f} | {r['eval_seconds']:.0f} | {cell_s} "
                     f"| {cpu} |")
    if mode.name == "full":
        lines += _other_measurements()
    text = "\n".join(lines) + "\n"
    with open(mode.report, "w") as f:
        f.write(text)
    _plot(mode.report, methods, summary)
    return text


def _accuracy(c: dict) -> str:
    """A summarised cell as the report's tables and verdicts write it: mean +- std (seeds), in %."""
    return f"{100 * c['mean']:.1f} +- {100 * c['std']:.1f} ({c['n']})"


GLANCE_METHODS = ("d3", "dm", "peer", "herding", "kcenter", "random", "full")


def _panels(summary: dict, dataset: str, methods) -> list[tuple[str, str]]:
    """The (protocol, arch) panels of ``dataset`` where any of ``methods`` was scored, P-noaug and
    ConvNet first."""
    keys = {(k[1], k[2]) for k in summary if k[0] == dataset and k[3] in methods}
    return sorted(keys, key=lambda k: (not k[0].startswith("P-noaug"), k[0], k[1] != "convnet", k[1]))


def _at_a_glance(summary: dict, datasets: list[str], ipcs: list[int], defined=METHODS) -> list[str]:
    """D3 and every baseline side by side in each panel, one table per dataset and budget, and the
    ablations side by side across budgets: the best mean of each column in bold."""
    def column(cells_: list, contenders: list[bool]) -> list[str]:
        best = max((c["mean"] for c, ok in zip(cells_, contenders) if c and ok), default=None)
        return ["-" if c is None else (f"**{100 * c['mean']:.1f}**" if ok and c["mean"] == best else
                                       f"{100 * c['mean']:.1f}") + (f" +- {100 * c['std']:.1f}" if c["n"] > 1 else "")
                + f" ({c['n']})" for c, ok in zip(cells_, contenders)]

    lines = ["## At a glance", "", "Mean +- std test accuracy in % (seeds in brackets); in bold the best stored set of "
             "each column (all real train images are the upper bound, the same cells at every budget); a dash: not "
             "scored yet, or an ablation that is the recipe itself at that budget.", ""]
    for dataset in datasets:
        panels = _panels(summary, dataset, GLANCE_METHODS)
        for ipc in ipcs:
            methods = [m for m in GLANCE_METHODS if any((dataset, *p, m, ipc) in summary for p in panels)
                       and m != "full"] + ["full"]
            if not any((dataset, *p, "d3", ipc) in summary for p in panels):
                continue
            grid_ = [column([summary.get((dataset, *p, m, FULL_IPC if m == "full" else ipc)) for m in methods],
                            [m != "full" for m in methods]) for p in panels]
            lines += _glance_table(f"{dataset}, ipc_budget {ipc}", [f"{p} {a}" for p, a in panels], methods, grid_)
    for dataset in datasets:
        for protocol, arch in _panels(summary, dataset, ABLATIONS)[:1]:
            budgets = [i for i in ipcs if (dataset, protocol, arch, "d3", i) in summary]
            # The variants this grid defines (a quick run leaves some out), scored yet or not.
            rows = [m for m in ("d3", *ABLATIONS, "random") if m in defined]
            grid_ = [column([summary.get((dataset, protocol, arch, m, i)) for m in rows], [True] * len(rows))
                     for i in budgets]
            lines += _glance_table(f"{dataset} ablations, {protocol} {arch}", [f"ipc_budget {i}" for i in budgets],
                                   rows, grid_)
    return lines


def _glance_table(title: str, columns: list[str], methods: list[str], grid_: list[list[str]]) -> list[str]:
    """A titled table with a row per method and ``grid_[column][row]`` in its cells."""
    return [f"### {title}", "", "| method | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns),
            *[f"| {METHOD_NAMES[m]} | " + " | ".join(col[i] for col in grid_) + " |" for i, m in enumerate(methods)], ""]


# The benchmark's targets: D3's accuracy floor per budget in the headline panel, where it must
# also be ahead of every baseline. Ablations of single terms must beat random real images there.
TARGET_PANEL = ("mnist5k", "P-noaug", "convnet")
TARGET_ACCURACY = {1: 0.85, 10: 0.95}
BASELINES = ("random", "herding", "kcenter", "dm", "peer")
SINGLE_TERM_ABLATIONS = ("d3-mtt-only", "d3-mmd-only")


def _verdicts(summary: dict, with_targets: bool = True) -> list[str]:
    """Targets met or missed, every panel where a baseline is level with or ahead of D3, and the
    single-term ablations against random real images: stated from the cells, never by hand."""
    lines = ["### Targets, and where D3 is not ahead", ""]
    for ipc, floor in TARGET_ACCURACY.items() if with_targets else ():
        d3 = summary.get((*TARGET_PANEL, "d3", ipc))
        others = {m: summary[(*TARGET_PANEL, m, ipc)] for m in BASELINES if (*TARGET_PANEL, m, ipc) in summary}
        where = f"{', '.join(TARGET_PANEL)}, ipc_budget {ipc}"
        if d3 is None:
            lines.append(f"- {where}: D3 not run yet; target >= {100 * floor:.0f} % and ahead of every baseline.")
            continue
        best = max(others, key=lambda m: others[m]["mean"]) if others else None
        floor_met = "met" if d3["mean"] >= floor else "MISSED"
        ahead = ("no baseline run yet" if best is None else
                 f"{'met' if d3['mean'] > others[best]['mean'] else 'MISSED'} (best baseline: "
                 f"{METHOD_NAMES[best]} {_accuracy(others[best])}; {len(others)} of {len(BASELINES)} baselines run)")
        lines.append(f"- {where}: D3 {_accuracy(d3)}. Target >= {100 * floor:.0f} %: {floor_met}. "
                     f"Ahead of every baseline: {ahead}.")
    behind = []
    for key, d3 in sorted(summary.items()):
        if key[3] != "d3":
            continue
        level = [(m, summary[(*key[:3], m, key[4])]) for m in BASELINES if (*key[:3], m, key[4]) in summary]
        level = [(m, c) for m, c in level if c["mean"] >= d3["mean"]]
        if level:
            behind.append(f"- {', '.join(key[:3])}, ipc_budget {key[4]}: D3 {_accuracy(d3)} against "
                          + ", ".join(f"{METHOD_NAMES[m]} {_accuracy(c)}" for m, c in level) + ".")
    if len(lines) > 2:  # after the target lines
        lines.append("")
    lines += ["Panels where a baseline is level with or ahead of D3:", ""] + (behind or ["- none so far."])
    ablations = []
    for key, random_real in sorted(summary.items()):
        # The headline protocol, also with a mode's overrides (e.g. "P-noaug[epochs=100]").
        if key[3] != "random" or (key[1].split("[")[0], key[2]) != TARGET_PANEL[1:] or key[4] != 1:
            continue
        for m in SINGLE_TERM_ABLATIONS:
            if (c := summary.get((*key[:3], m, 1))) is not None:
                verdict = "beats" if c["mean"] > random_real["mean"] else "DOES NOT beat"
                ablations.append(f"- {key[0]}, ipc_budget 1: {METHOD_NAMES[m]} {_accuracy(c)} {verdict} random real "
                                 f"{_accuracy(random_real)}.")
    lines += ["", "Single-term ablations against random real images (P-noaug, convnet, ipc_budget 1):", ""]
    lines += (ablations or ["- not run yet."])
    # An ablation that removes a part of D3 and scores as well means that part is not earning its cost there.
    level = [f"- {', '.join(key[:3])}, ipc_budget {key[4]}: {METHOD_NAMES[m]} {_accuracy(c)} against D3 {_accuracy(d3)}."
             for key, d3 in sorted(summary.items()) if key[3] == "d3"
             for m in ABLATIONS if (c := summary.get((*key[:3], m, key[4]))) is not None and c["mean"] >= d3["mean"]]
    lines += ["", "Ablations level with or ahead of the whole method:", ""]
    return lines + (level or ["- none so far."]) + [""]


def _ledger(results: list[dict]) -> list[str]:
    """What each method stores at each budget (its first seed's build)."""
    if not results:
        return []
    # Scalars in one image per class, from a D3 ledger or an image set's pixels.
    per_ipc = {}
    for r in results:
        if "ledger" in r:
            per_ipc[r["dataset"]] = r["ledger"]["scalars_per_ipc"]
        elif r["method"] != "full":
            per_ipc.setdefault(r["dataset"], r["storage_scalars"] // r["ipc_budget"])
    lines = ["### Storage ledger", "",
             "What each method stores, in fp32 scalars (4 bytes each). Labels are implicit: every stored set is "
             "ordered by class, one block of priors or images per class.", "",
             "| dataset | ipc_budget | method | stored | scalars | IPC-equivalent |", "|---|---:|---|---|---:|---:|"]
    seen = set()
    for r in sorted(results, key=lambda r: (r["dataset"], r["ipc_budget"], METHODS.index(r["method"]), r["seed"])):
        key = (r["dataset"], r["ipc_budget"], r["method"])
        if key in seen:
            continue
        seen.add(key)
        if "ledger" in r:
            stored = ", ".join(f"{name} {n:,}" for name, n in sorted(r["ledger"]["components"].items()))
        else:
            stored = f"pixels {r['storage_scalars']:,}"
        ipc = "all" if r["method"] == "full" else str(r["ipc_budget"])
        ipc_eq = r["storage_scalars"] / per_ipc[r["dataset"]] if r["dataset"] in per_ipc else float("nan")
        lines.append(f"| {r['dataset']} | {ipc} | {METHOD_NAMES[r['method']]} | {stored} | "
                     f"{r['storage_scalars']:,} | {ipc_eq:.3f} |")
    return lines + [""]


# Measurements made by the other benchmark scripts, gathered into RESULTS.md when present.
OTHER_REPORTS = ("baseline_check.md", "subtasks.md", "iteration_split.md", "unroll_memory.md", "speed_and_storage.md",
                 "cpu_allocator.md", "reproducibility.md")


def _other_measurements() -> list[str]:
    lines = []
    for name in OTHER_REPORTS:
        path = os.path.join(HERE, name)
        if os.path.exists(path):
            with open(path) as f:
                body = f.read().strip().splitlines()
            # Demote the section's own title one level under RESULTS.md.
            lines += [("#" + body[0]) if body and body[0].startswith("# ") else body[0], *body[1:], "",
                      f"(from `benchmarks/{name}`)", ""]
    return lines


def _plot(report: str, methods: list[str], summary: dict) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("matplotlib is not installed (pip install -e .[bench]); no plot written", file=sys.stderr)
        return
    panels = sorted({k[:3] for k in summary})
    if not panels:
        return
    # One row per dataset, one colour per method in every panel, one legend; the ablations are in
    # the tables only (a dozen lines per panel would hide the comparison).
    datasets = sorted({p[0] for p in panels})
    columns = sorted({p[1:] for p in panels})
    shown = [m for m in methods if m not in ABLATIONS and m != "full"]
    colours = {m: f"C{i}" for i, m in enumerate(shown)}
    fig, axes = plt.subplots(len(datasets), len(columns), figsize=(3.6 * len(columns), 3.2 * len(datasets)),
                             squeeze=False)
    for row, dataset in enumerate(datasets):
        for col, (protocol, arch) in enumerate(columns):
            ax, panel = axes[row][col], (dataset, protocol, arch)
            ax.set_title(f"{dataset}, {protocol}, {arch}", fontsize=9)
            for method in shown:
                points = sorted((k[4], v) for k, v in summary.items() if k[:3] == panel and k[3] == method)
                if points:
                    ax.errorbar([v["storage"] for _, v in points], [100 * v["mean"] for _, v in points],
                                yerr=[100 * v["std"] for _, v in points], marker="o", capsize=3,
                                color=colours[method], linestyle="none" if method == "peer" else "-",
                                label=METHOD_NAMES[method])
            full = [v for k, v in summary.items() if k[:3] == panel and k[3] == "full"]
            if full:
                ax.axhline(100 * full[0]["mean"], color="grey", linestyle="--", label=METHOD_NAMES["full"])
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # labels on the decades only
            ax.set_xlabel("storage (scalars)", fontsize=8)
            ax.set_ylabel("test accuracy (%)", fontsize=8)
            ax.tick_params(labelsize=7)
    handles = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(os.path.splitext(report)[0] + ".png", dpi=110)
    plt.close(fig)


def machine() -> dict:
    """What decides the float results besides the code and the seed: the CPU's kernels and the
    thread count (the same cell on another CPU trains to a different, equally valid, number)."""
    import torch

    from d3hf.utils.environment import cpu_model

    return {"cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "cores": os.cpu_count()}


def _machine_text(m: dict) -> str:
    return f"{m['cpu']} ({m['cpu_capability']}), {m['torch_threads']} torch thread(s), torch {m['torch']}"


def _rel(path: str) -> str:
    return os.path.relpath(path, REPO)


def _torch_version() -> str:
    import torch

    return torch.__version__


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="digits, 1 seed, short runs (under 30 minutes)")
    p.add_argument("--smoke", action="store_true", help="seconds-long run of every code path (for the tests)")
    p.add_argument("--out", default=HERE, help="folder for the cache and the report (default: benchmarks/)")
    p.add_argument("--datasets")
    p.add_argument("--ipc", help="comma-separated ipc budgets")
    p.add_argument("--methods", help=f"comma-separated, of {','.join(METHODS)}")
    p.add_argument("--seeds", type=int)
    p.add_argument("--only-seeds", help="comma-separated: run only these of the seeds (e.g. one per stream)")
    p.add_argument("--protocols")
    p.add_argument("--archs")
    p.add_argument("--max-minutes", type=float, default=None, help="stop starting new cells after this long")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--status", action="store_true", help="print what of the selection is scored and what is missing")
    a = p.parse_args(argv)
    mode = dataclasses.replace(SMOKE if a.smoke else QUICK if a.quick else Mode(name="full"), out=a.out)
    picks = {"datasets": a.datasets, "ipcs": a.ipc, "methods": a.methods, "protocols": a.protocols,
             "archs": a.archs}
    for field, value in picks.items():
        if value:
            items = tuple(int(v) if field == "ipcs" else v for v in value.split(","))
            mode = dataclasses.replace(mode, **{field: items})
    if a.seeds:
        mode = dataclasses.replace(mode, seeds=a.seeds)
    if a.only_seeds:
        mode = dataclasses.replace(mode, only_seeds=tuple(int(v) for v in a.only_seeds.split(",")))
    unknown = set(mode.methods) - set(METHODS)
    if unknown:
        p.error(f"unknown methods {sorted(unknown)}")
    if a.status:
        print("\n".join(coverage(mode)))
        return
    if not a.report_only:
        from d3hf.utils.allocator import keep_freed_memory

        keep_freed_memory()
        run_grid(mode, a.max_minutes)
    command = "python benchmarks/grid.py" + (" --quick" if a.quick else " --smoke" if a.smoke else "")
    print(write_report(mode, command))


if __name__ == "__main__":
    main()
