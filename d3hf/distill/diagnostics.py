"""What the matching phase does, seen along a run: the validation curve of one task.

Every ``eval_every`` iterations (and where the matching phase starts, so the warm start is the
first point) a ``curve`` record goes into the task's ``metrics.jsonl``: the accuracy of a fresh
network trained on the task's samples and tested on its classes of the validation split, and the
normalised MTT loss of those samples and of random real images at the same storage, over fixed
expert segments. Each point runs with the random state saved and restored, and reads the model
without changing it, so a run with a curve distils exactly what it would without one.
"""

from __future__ import annotations

import logging
import time

import torch

from ..data.image_data import ImageClassificationData
from ..evaluation.image_sets import random_real_images
from ..evaluation.protocols import named_protocol
from ..evaluation.training import evaluate, model_source
from .callbacks import DistillCallback
from .distiller import Distiller
from .tracking import TaskTracker

logger = logging.getLogger(__name__)

# Expert segments each MTT reference point averages over: one iteration's loss varies by a few
# hundredths from segment to segment, more than the curve should show.
REFERENCE_SEGMENTS = 8


class ValidationCurve(DistillCallback):
    """The curve of one task: ``start()`` before the matching phase, then a callback of its
    distiller (``distiller.callbacks.append(curve)``)."""

    def __init__(self, distiller: Distiller, view: ImageClassificationData, tracker: TaskTracker, every: int,
                 epochs: int, num_per_class: int, ipc: int, seed: int, device: torch.device | str = "cpu"):
        if view.test is None:
            raise ValueError("a validation curve needs the task's held-out rows (view.test)")
        self.distiller, self.view, self.tracker = distiller, view, tracker
        self.every, self.seed, self.device = every, seed, torch.device(device)
        self.protocol = named_protocol("P-noaug", epochs=epochs, num_per_class=num_per_class)
        self.real = random_real_images(view, ipc, seed)  # the reference images at the same storage
        self.ipc = ipc
        self.seconds = 0.0  # spent on the curve, not on distilling

    def start(self) -> None:
        """The point where the matching phase starts (or resumes, if that is on the curve)."""
        self._point_if_due(self.distiller.iteration)

    def on_iteration_end(self, iteration: int, record: dict) -> None:
        self._point_if_due(iteration)

    def _point_if_due(self, iteration: int) -> None:
        if iteration % self.every == 0 and not self.tracker.has("curve", iteration):
            self.tracker.log_curve(iteration, self.point())

    def point(self) -> dict:
        """The curve's values for the model as it is now."""
        t = time.perf_counter()
        if self.device.type == "cuda":
            devices = [self.device.index if self.device.index is not None else torch.cuda.current_device()]
        else:
            devices = []
        with torch.random.fork_rng(devices=devices):  # the run's own random stream is left where it was
            model = self.distiller.model
            was_training = model.training
            model.eval()
            try:
                result = evaluate(lambda s: model_source(model, self.protocol.num_per_class, self.seed + s),
                                  self.view, self.protocol, 1, device=self.device)
                reference = self.distiller.mtt_reference(REFERENCE_SEGMENTS, (self.real.images, self.real.labels),
                                                         seed=self.seed)
            finally:
                model.train(was_training)
        values = {"accuracy": result["mean"], "split": result["split"], **reference,
                  "real_images_per_class": self.ipc, "seconds": time.perf_counter() - t}
        self.seconds += values["seconds"]
        logger.info("iteration %d: %s accuracy %.4f, MTT loss %.4f (real images %.4f)", self.distiller.iteration,
                    result["split"], values["accuracy"], values["mtt_model"], values["mtt_real"])
        return values
