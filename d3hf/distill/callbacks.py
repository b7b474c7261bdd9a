"""Hooks a distillation calls as it goes, in the manner of transformers' ``TrainerCallback``.

Subclass ``DistillCallback``, override the events you need and pass instances to
``run_distillation(..., callbacks=[...])`` (or to ``Distiller`` / ``build_expert_buffer``). An
event runs on the process that reaches it, in the order the callbacks were given.
"""

from __future__ import annotations

from collections.abc import Sequence


class DistillCallback:
    """No-op events; a subclass overrides the ones it needs."""

    def on_expert_trained(self, index: int, history: list[dict]) -> None:
        """Expert ``index`` finished training: ``history`` has one ``{"epoch", "loss", "accuracy"}``
        per epoch (on its training batches). ``on_expert_saved`` follows once it is on disk."""

    def on_expert_saved(self, index: int, path: str) -> None:
        """Expert ``index``'s trajectory is on disk at ``path``."""

    def on_iteration_end(self, iteration: int, record: dict) -> None:
        """Matching iteration ``iteration`` is done (``record``: its losses and step size); its
        checkpoint, if one is due, is written after this event."""

    def on_artifact_written(self, folder: str) -> None:
        """The final artifact's files are in the temporary ``folder``, not yet renamed into place."""


def fire(callbacks: Sequence[DistillCallback], event: str, *args) -> None:
    """Call ``event`` on every callback, in order."""
    for callback in callbacks:
        getattr(callback, event)(*args)
