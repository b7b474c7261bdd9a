"""Where a run's numbers go while it runs: ``metrics.jsonl``, TensorBoard, accelerate's trackers.

Every task (subtask) keeps its own ``metrics.jsonl`` in its folder (``OUTPUT_DIR/subtasks/K/``)
and, when TensorBoard is wanted, its own event files (``OUTPUT_DIR/tensorboard/subtask_KK/``, its
experts' in ``subtask_KK_experts/``), so no two processes ever write one file and a task's record
moves with its checkpoint: on resume the lines after the checkpoint are dropped and written
again, never twice. The run's own
records (the final evaluation) go to ``OUTPUT_DIR/metrics.jsonl``. Service trackers (Trackio,
W&B, MLflow, ...) are accelerate's, on the main process: its tasks are logged as they run, the
other processes' tasks when their results arrive.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from importlib.util import find_spec

from ..errors import ConfigError
from ..utils.io import atomic_path
from .callbacks import DistillCallback
from .layout import METRICS_FILE, SUBTASKS_DIR, TENSORBOARD_DIR

logger = logging.getLogger(__name__)

# accelerate's tracker names -> (module that must be importable, how to install it).
TRACKERS = {
    "tensorboard": ("tensorboard", 'pip install "d3hf[tracking]"  (or: pip install tensorboard)'),
    "trackio": ("trackio", "pip install trackio"),
    "wandb": ("wandb", "pip install wandb"),
    "mlflow": ("mlflow", "pip install mlflow"),
    "comet_ml": ("comet_ml", "pip install comet_ml"),
    "aim": ("aim", "pip install aim"),
    "clearml": ("clearml", "pip install clearml"),
    "dvclive": ("dvclive", "pip install dvclive"),
    "swanlab": ("swanlab", "pip install swanlab"),
}
# The values the distiller logs at each log step, under their tracker tag.
DISTILL_SCALARS = {
    "mtt": "mtt_normalised", "mtt_distance": "mtt_raw", "mmd": "mmd", "loss": "loss_weighted",
    "step_size": "step_size", "grad_norm_priors": "grad_norm_priors", "grad_norm_decoder": "grad_norm_decoder",
    "lr_priors": "lr_priors", "lr_decoder": "lr_decoder", "prior_logvar_mean": "prior_logvar_mean",
    "seconds_per_iteration": "seconds_per_iteration", "peak_memory_mb": "peak_memory_mb",
    "prior_std_mean": "prior_std_mean", "drift_prior_means": "drift_prior_means",
    "drift_prior_logvars": "drift_prior_logvars", "drift_decoder": "drift_decoder",
    "grad_norm_mtt": "grad_norm_mtt_term", "grad_norm_mmd": "grad_norm_mmd_term",
}
# A validation curve point's values (diagnostics.ValidationCurve) and their tracker tags.
CURVE_SCALARS = {"accuracy": "curve/validation_accuracy", "mtt_model": "curve/mtt_fixed_segments",
                 "mtt_real": "curve/mtt_real_images"}


def _installed(name: str) -> bool:
    return find_spec(TRACKERS[name][0]) is not None


def parse_report_to(value: str | Sequence[str] | None) -> list[str]:
    """``report_to`` as names: ``"none"``, ``"auto"``, ``"all"``, ``"tensorboard,wandb"``, a JSON
    or YAML list. Refuses an unknown name (``ConfigError``)."""
    if value is None:
        return ["none"]
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                raise ConfigError(f"Config key 'report_to': {value!r} is not a list of tracker names") from None
        else:
            value = text.split(",")
    names = [str(v).strip().lower() for v in value if str(v).strip()] or ["none"]
    special = {"none", "auto", "all"}
    unknown = [n for n in names if n not in TRACKERS and n not in special]
    if unknown:
        import difflib

        hints = [f"{n} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(n, [*TRACKERS, *special], 1))
                 else n for n in unknown]
        raise ConfigError(f"Config key 'report_to': unknown tracker(s) {', '.join(hints)}; use none, auto, all or "
                          f"some of {', '.join(TRACKERS)}.")
    if len(names) > 1 and special & set(names):
        raise ConfigError(f"Config key 'report_to': {', '.join(sorted(special & set(names)))} stands alone; "
                          f"got {names}.")
    return names


def resolve_report_to(value: str | Sequence[str] | None) -> list[str]:
    """The trackers a run reports to: ``none`` -> [], ``auto`` -> TensorBoard when installed,
    ``all`` -> every installed tracker, else the names given, each of which must be installed
    (``ConfigError`` naming the install command otherwise)."""
    names = parse_report_to(value)
    if names == ["none"]:
        return []
    if names == ["auto"]:
        return ["tensorboard"] if _installed("tensorboard") else []
    if names == ["all"]:
        return [n for n in TRACKERS if _installed(n)]
    missing = [n for n in names if not _installed(n)]
    if missing:
        raise ConfigError("report_to names tracker(s) that are not installed: "
                          + "; ".join(f"{n}: {TRACKERS[n][1]}" for n in missing))
    return names


def peak_memory_mb(device) -> float:
    """Peak memory of this process so far: allocated on a GPU, resident set size on the CPU."""
    import torch

    if getattr(device, "type", str(device)) == "cuda" and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports kB


class MetricsLog:
    """One ``metrics.jsonl``: one JSON object per line, appended and flushed line by line.

    A record is keyed by its phase, expert, epoch, iteration and method; a key already in the file is not
    written again, so replaying a task's records after a restart adds only what is missing."""

    def __init__(self, path: str):
        self.path = path
        self.records = read_jsonl(path)
        self._keys = {_key(r) for r in self.records}

    def truncate(self, phase: str, after_iteration: int) -> None:
        """Drop ``phase`` records past ``after_iteration`` (those a resumed task redoes)."""
        kept = [r for r in self.records if not (r.get("phase") == phase and r.get("iteration", 0) > after_iteration)]
        if len(kept) != len(self.records):
            with atomic_path(self.path) as tmp, open(tmp, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in kept)
            self.records, self._keys = kept, {_key(r) for r in kept}

    def append(self, record: dict) -> bool:
        """Write ``record`` unless its key is there already; True if written."""
        key = _key(record)
        if key in self._keys:
            return False
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.records.append(record)
        self._keys.add(key)
        return True


def _key(record: dict) -> tuple:
    return tuple(record.get(k) for k in ("phase", "expert", "epoch", "iteration", "method"))


def read_jsonl(path: str) -> list[dict]:
    """The records of a metrics file; a last line cut short by a killed process is skipped."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def read_metrics(run_dir: str) -> list[dict]:
    """Every record of a run folder: its own ``metrics.jsonl`` and each task's."""
    records = read_jsonl(os.path.join(run_dir, METRICS_FILE))
    tasks = os.path.join(run_dir, SUBTASKS_DIR)
    if os.path.isdir(tasks):
        for name in sorted(os.listdir(tasks), key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else 0, n)):
            records += read_jsonl(os.path.join(tasks, name, METRICS_FILE))
    return records


def last_values(records: list[dict]) -> dict[str, dict]:
    """The latest figures of a run: per subtask its last matching record's terms, experts' final
    accuracy and validation curve ([iteration, accuracy] points), and the final evaluation's
    accuracies."""
    out: dict[str, dict] = {}
    for r in records:
        phase = r.get("phase")
        if phase == "distill":
            keep = {k: r[k] for k in ("iteration", "mtt", "mmd", "loss", "step_size", "seconds_per_iteration")
                    if k in r}
            out.setdefault(task_run(r.get("subtask", 0)), {}).update(keep)
        elif phase == "experts":
            final = out.setdefault(task_run(r.get("subtask", 0)), {}).setdefault("expert_final_accuracy", {})
            final[str(r["expert"])] = r["accuracy"]
        elif phase == "curve":
            points = out.setdefault(task_run(r.get("subtask", 0)), {}).setdefault("validation_curve", [])
            points.append([r["iteration"], r["accuracy"]])
        elif phase == "evaluation":
            out.setdefault("evaluation", {})[f"{r['method']} ({r['split']})"] = r["accuracy"]
    return out


class RunTracker:
    """This process's sinks for one run: per-task metrics files, TensorBoard writers, and (on the
    main process) accelerate's trackers for the service names in ``report_to``."""

    def __init__(self, output_dir: str, report_to: list[str], accelerator=None, hyperparameters: dict | None = None,
                 device=None):
        self.output_dir = output_dir
        self.tensorboard = "tensorboard" in report_to
        self.services = [n for n in report_to if n != "tensorboard"]
        # accelerate's trackers: those report_to asked d3hf distill to create, or a caller's own.
        self.accelerator = accelerator if accelerator is not None and getattr(accelerator, "log_with", None) else None
        if self.services and self.accelerator is None:
            logger.warning("report_to names %s, but this run's Accelerator has no trackers: make it with "
                           "Accelerator(log_with=...) (d3hf distill does). Only metrics.jsonl%s are written.",
                           ", ".join(self.services), " and TensorBoard files" if self.tensorboard else "")
        self.device = device
        self.hyperparameters = hyperparameters or {}
        self._writers: dict[str, object] = {}
        self._step = 0  # service trackers want one increasing step per run
        if self.accelerator is not None:
            self.accelerator.init_trackers(os.path.basename(os.path.abspath(output_dir)) or "d3hf",
                                           config=_flat_hyperparameters(self.hyperparameters))

    # ------------------------------------------------------------------ sinks

    def _writer(self, run: str, purge_step: int | None = None):
        """``run``'s TensorBoard writer; ``purge_step`` (on its first opening) hides the events a
        killed process wrote at that step or later."""
        if run not in self._writers:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(os.path.join(self.output_dir, TENSORBOARD_DIR, run), purge_step=purge_step)
            writer.add_text("config", "```\n" + json.dumps(self.hyperparameters, indent=1, default=str) + "\n```")
            self._writers[run] = writer
        return self._writers[run]

    def scalars(self, run: str, values: dict[str, float], step: int, folder: str | None = None) -> None:
        """``values`` under ``run/`` tags, at ``step`` (TensorBoard, in ``folder``, default ``run``)
        or at the next run step (services)."""
        values = {f"{run}/{k}": float(v) for k, v in values.items() if v is not None}
        if self.tensorboard:
            writer = self._writer(folder or run)
            for tag, value in values.items():
                writer.add_scalar(tag, value, step)
            writer.flush()
        if self.accelerator is not None and self.accelerator.is_main_process:
            self._step += 1
            self.accelerator.log(values, step=self._step)

    def task(self, index: int, task_dir: str, log_every: int) -> "TaskTracker":
        return TaskTracker(self, index, task_dir, log_every)

    def log_evaluation(self, evaluation: dict) -> None:
        """The final evaluation's accuracies, into the run's own metrics file and the trackers."""
        log = MetricsLog(os.path.join(self.output_dir, METRICS_FILE))
        values = {}
        for r in evaluation.get("results", []):
            name = "d3hf_artifact" if r["method"] == "d3hf artifact" else "random_real"
            values[f"{name}_accuracy"] = r["mean"]
            log.append({"phase": "evaluation", "method": r["method"], "split": r["split"], "accuracy": r["mean"],
                        "std": r["std"], "seeds": r["seeds"], "time": time.time()})
        if values:
            self.scalars("evaluation", values, 0)

    def replay(self, index: int, task_dir: str) -> None:
        """Another process's task, from its metrics file, to the service trackers (main process)."""
        if self.accelerator is None or not self.accelerator.is_main_process:
            return
        for r in read_jsonl(os.path.join(task_dir, METRICS_FILE)):
            self._step += 1
            self.accelerator.log({f"{task_run(index)}/{k}": v for k, v in _tracker_values(r).items()},
                                 step=self._step)

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


def task_run(index: int) -> str:
    return f"subtask_{index:02d}"


def _tracker_values(record: dict) -> dict[str, float]:
    if record.get("phase") == "experts":
        return {f"expert_{record['expert']}/loss": record["loss"], f"expert_{record['expert']}/accuracy":
                record["accuracy"]}
    if record.get("phase") == "curve":
        return {tag: record[key] for key, tag in CURVE_SCALARS.items() if record.get(key) is not None}
    return {tag: record[key] for key, tag in DISTILL_SCALARS.items() if record.get(key) is not None}


def _flat_hyperparameters(values: dict) -> dict:
    """Scalars only (trackers' hyperparameter tables take str, int, float and bool)."""
    return {k: v if isinstance(v, (str, int, float, bool)) else json.dumps(v) for k, v in values.items()
            if v is not None}


class TaskTracker(DistillCallback):
    """One task's records: expert epochs when an expert is saved, the distiller's record every
    ``log_every`` iterations; installed by the runner as a ``DistillCallback``."""

    def __init__(self, run: RunTracker, index: int, task_dir: str, log_every: int):
        self.run = run
        self.index = index
        self.log = MetricsLog(os.path.join(task_dir, METRICS_FILE))
        self.log_every = log_every
        self._window_seconds = 0.0
        self._window_iterations = 0

    def resume_at(self, iteration: int) -> None:
        """The task continues after ``iteration``: later distill records were never checkpointed."""
        self.log.truncate("distill", iteration)
        self.log.truncate("curve", iteration)
        if self.run.tensorboard:
            self.run._writer(task_run(self.index), purge_step=iteration + 1)

    def log_experts(self, history: dict[str, list[dict]]) -> None:
        """Every expert epoch in ``history`` not yet recorded (all of them for a fresh buffer)."""
        for expert in sorted(history, key=int):
            self._log_expert(int(expert), history[expert])

    def _log_expert(self, expert: int, epochs: list[dict]) -> None:
        for e in epochs:
            record = {"phase": "experts", "subtask": self.index, "expert": expert, "epoch": e["epoch"],
                      "loss": e["loss"], "accuracy": e["accuracy"], "time": time.time()}
            if self.log.append(record):  # a folder of their own: a resumed matching phase purges only its own
                self.run.scalars(task_run(self.index), _tracker_values(record), e["epoch"],
                                 folder=task_run(self.index) + "_experts")

    def on_expert_trained(self, index: int, history: list[dict]) -> None:
        self._log_expert(index, history)

    def has(self, phase: str, iteration: int) -> bool:
        """Whether a ``phase`` record of ``iteration`` is in the task's file already."""
        return any(r.get("phase") == phase and r.get("iteration") == iteration for r in self.log.records)

    def log_curve(self, iteration: int, values: dict) -> None:
        """A validation curve point (``diagnostics.ValidationCurve``)."""
        row = {"phase": "curve", "subtask": self.index, "iteration": iteration, **values, "time": time.time()}
        if self.log.append(row):
            self.run.scalars(task_run(self.index), _tracker_values(row), iteration)

    def on_iteration_end(self, iteration: int, record: dict) -> None:
        self._window_iterations += 1
        self._window_seconds += record.get("seconds", 0.0)
        if not self.log_every or iteration % self.log_every:
            return
        seconds = self._window_seconds / self._window_iterations  # since the last log step
        self._window_seconds, self._window_iterations = 0.0, 0
        row = {"phase": "distill", "subtask": self.index, **record, "iteration": iteration,
               "seconds_per_iteration": seconds, "peak_memory_mb": peak_memory_mb(self.run.device),
               "time": time.time()}
        if self.log.append(row):
            self.run.scalars(task_run(self.index), _tracker_values(row), iteration)
