"""Scoring the cells: one cell (build, then a fresh downstream network trained and tested), the
resumable loop over a mode's cells, and the records it leaves: loading them, telling the stale
ones apart, and how much of the grid they cover."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

from .builds import Busy, NotApplicable, build_d3, build_digest, build_image_set, exclusive, load_data
from .modes import D3_VARIANTS, METHOD_NAMES, METHODS, Mode, cell_name, cells


def run_cell(data, dataset: str, ipc: int, method: str, seed: int, protocol_name: str, arch: str, mode: Mode,
             checkpoint_dir: str | None = None) -> dict:
    """Build (or find) the cell's training set and score it; the downstream training resumes from
    ``checkpoint_dir`` (one per cell and settings digest) when a killed run left it there."""
    from d3hf.evaluation.image_sets import load_image_set
    from d3hf.evaluation.training import evaluate, fixed_source, model_source
    from d3hf.modeling.modeling_d3 import D3Model

    protocol = mode.protocol(protocol_name, arch, dataset, method)
    panel = mode.protocol(protocol_name, arch).name  # the report's panel: the all-real bound may train shorter
    if method in D3_VARIANTS:
        artifact, facts = build_d3(data, dataset, ipc, method, seed, mode)
        model = D3Model.from_pretrained(artifact)
        make_source = lambda s: model_source(model, protocol.num_per_class, s)  # noqa: E731
    elif method == "peer":
        images = load_image_set(os.path.join(mode.peer_dir, f"dm_{dataset}_ipc{ipc}.npz"))
        facts = {"storage_scalars": images.storage_scalars, "build_seconds": 0.0}
        make_source = lambda s: fixed_source(images.images, images.labels)  # noqa: E731
    else:
        images, facts = build_image_set(data, dataset, method, ipc, seed, mode)
        make_source = lambda s: fixed_source(images.images, images.labels)  # noqa: E731
    t = time.perf_counter()
    # The all-real bound may train fewer epochs than the protocol: its test curve shows it converged.
    test_every = max(1, protocol.epochs // 10) if method == "full" else None
    # The evaluation seed is the build seed: one downstream network per built set.
    result = evaluate(lambda _: make_source(seed), data, protocol, seeds=1, show_progress=True,
                      checkpoint_dir=checkpoint_dir, test_every=test_every)
    curve = {"test_curve": result["test_curves"][0]} if test_every else {}
    before = result["seconds_before_resume"][0]
    # A resumed training counts the seconds it ran before, up to its last checkpoint.
    resumed = {"resumed_from_epoch": result["resumed_from_epochs"][0], "seconds_before_resume": before} \
        if before else {}
    if "checkpointed_on" in result:  # the checkpoint resumed from was made on another machine
        resumed["checkpointed_on"] = result["checkpointed_on"]
    drawn = {"prior_draw": PRIOR_DRAW} if method in D3_VARIANTS else {}
    trained = {"trained_under": protocol.name} if protocol.name != panel else {}
    return {"dataset": dataset, "ipc_budget": ipc, "method": method, "seed": seed, "protocol": panel, **trained,
            "arch": arch, "accuracy": result["accuracies"][0], **curve, "notes": result["notes"], **drawn,
            "eval_seconds": time.perf_counter() - t + before, **resumed, **facts}


def run_grid(mode: Mode, max_minutes: float | None) -> None:
    os.makedirs(mode.cells_dir, exist_ok=True)
    start = time.perf_counter()
    twins = _d3_records_by_settings(mode)
    for key in cells(mode):
        dataset, ipc, method, seed = key[:4]
        path = os.path.join(mode.cells_dir, cell_name(*key) + ".json")
        skipped = path.removesuffix(".json") + SKIPPED
        try:
            digest = build_digest(load_data(dataset), dataset, ipc, method, seed, mode)
        except NotApplicable as e:
            print(f"{cell_name(*key)}: skipped, {e}", file=sys.stderr)
            _write_json(skipped, {"skipped": str(e)})
            _set_aside(mode, path)  # scored when the recipe still had the variant
            continue
        if _scored(path, digest):
            continue
        twin = twins.get((*key[:2], *key[3:], digest)) if method in D3_VARIANTS else None
        if twin is not None and twin["method"] != method:
            # Another D3 row computed these very settings (e.g. MTT only, once the recipe drops the
            # MMD term): the same build and the same network, so its record is this row's too.
            build_d3(load_data(dataset), dataset, ipc, method, seed, mode)  # keeps the build under this row's name
            twin_name = cell_name(dataset, ipc, twin["method"], seed, *key[4:])
            _keep_record(mode, path, {**twin, "method": method, "same_as": twin_name})
            print(f"{cell_name(*key)}: the same settings as {twin_name}; its record is this row's", file=sys.stderr)
            continue
        if os.path.exists(path):
            with open(path) as f:
                earlier_draw = json.load(f).get("prior_draw") == EARLIER_PRIOR_DRAW
            why = "it was scored under the cyclic prior draw" if earlier_draw else "the recipe changed since it was scored"
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
                _keep_record(mode, path, result)
        except Busy as e:
            print(f"{cell_name(*key)}: left for a later run, {e}", file=sys.stderr)
            continue
        shutil.rmtree(scoring, ignore_errors=True)
        print(f"{cell_name(*key)}: {100 * result['accuracy']:.2f} % ({result['cell_seconds']:.0f} s)", file=sys.stderr)


# How D3Model.draw gave the downstream network its samples when a record was scored: the records
# marked "cyclic" (sample j of a class always took prior j mod lpc, so with 20 samples and 16
# priors the first 4 took two samples every epoch) are shown, counted, and scored anew by the
# next run; cells scored since carry PRIOR_DRAW.
PRIOR_DRAW = "balanced"
EARLIER_PRIOR_DRAW = "cyclic"


def _d3_records_by_settings(mode: Mode) -> dict:
    """The D3 rows' records under the current prior draw, the set-aside ones too, by (dataset,
    ipc_budget, seed, protocol, arch, settings digest)."""
    records = load_results(mode, _superseded_dir(mode)) + load_results(mode)  # a current record wins
    return {(r["dataset"], r["ipc_budget"], r["seed"], r["protocol"].split("[")[0], r["arch"], r.get("settings_digest")): r
            for r in records if r.get("method") in D3_VARIANTS and r.get("prior_draw") != EARLIER_PRIOR_DRAW}


def _keep_record(mode: Mode, path: str, record: dict) -> None:
    """Write a cell's record at ``path``: the stale one it replaces is set aside, and the mark that
    the cell did not exist goes (the variant exists again)."""
    _set_aside(mode, path)
    _write_json(path, record)
    skipped = path.removesuffix(".json") + SKIPPED
    if os.path.exists(skipped):
        os.remove(skipped)


def _superseded_dir(mode: Mode) -> str:
    return os.path.join(mode.cells_dir, "superseded")


def _set_aside(mode: Mode, path: str) -> None:
    """Move the record at ``path`` (a recipe change made it stale) under superseded/, named by its
    digest, where a row that has its settings later finds it (see run_grid); one without a digest goes."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        digest = json.load(f).get("settings_digest")
    if digest is None:
        os.remove(path)
        return
    os.makedirs(_superseded_dir(mode), exist_ok=True)
    os.replace(path, os.path.join(_superseded_dir(mode), f"{os.path.basename(path).removesuffix('.json')}_{digest}.json"))


def _scored(path: str, digest: str | None) -> bool:
    """Whether the record at ``path`` exists, was scored under ``digest`` and not under an
    earlier prior draw."""
    if not os.path.exists(path):
        return False
    with open(path) as f:
        record = json.load(f)
    return record.get("settings_digest") == digest and record.get("prior_draw") != EARLIER_PRIOR_DRAW


SKIPPED = ".skipped.json"  # the record of a cell that does not exist (NotApplicable), with the reason


def _write_json(path: str, record: dict) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=2)
    os.replace(path + ".tmp", path)


def load_results(mode: Mode, folder: str | None = None) -> list[dict]:
    """Every scored cell's record (in ``folder``, by default the mode's records)."""
    folder = folder or mode.cells_dir
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
             "(ablations under the first of each only, or a dataset's ABLATION_PROTOCOLS; the all-real bound under "
             "its FULL_ARCHS).", ""]
    missing = [(k, g) for k, g in groups.items() if g[0] < g[1]]
    if missing:
        lines += ["| dataset | ipc_budget | method | scored | cells |", "|---|---:|---|---:|---:|"]
        lines += [f"| {d} | {i} | {METHOD_NAMES[m]} | {g[0]} | {g[1]} |" for (d, i, m), g in sorted(
            missing, key=lambda item: (item[0][0], item[0][1], METHODS.index(item[0][2])))]
    return lines + [""]


def machine() -> dict:
    """What decides the float results besides the code and the seed: the CPU's kernels and the
    thread count (the same cell on another CPU trains to a different, equally valid, number)."""
    import torch

    from d3hf.utils.environment import cpu_model

    return {"cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "cores": os.cpu_count()}
