"""What a run folder holds (``OUTPUT_DIR``), by name."""

from __future__ import annotations

from ..utils.outputs import MARKER

RUN_FILE = "run_config.json"
DATA_FILE = "data.json"  # the rows a run distils and tests on, as loaded when it started
ARTIFACT_DIR = "artifact"
SUBTASKS_DIR = "subtasks"
FINISHED_FILE = "finished.json"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
CURVES_FILE = "curves.png"
# Everything a run folder may hold; an --overwrite_output_dir restart removes exactly these.
RUN_ENTRIES = (RUN_FILE, DATA_FILE, ARTIFACT_DIR, SUBTASKS_DIR, SUMMARY_FILE, METRICS_FILE, TENSORBOARD_DIR, CURVES_FILE, MARKER)
