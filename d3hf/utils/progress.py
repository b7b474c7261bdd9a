"""One progress line for a whole run: the phase under way, its bar, and the run's time left.

Library loops ask ``bar(phase, ...)`` for a progress bar. Outside a run that is a plain tqdm
bar. Inside ``RunProgress`` (``d3hf distill`` opens one on the main process with the phases
it plans: experts, warm start, distill per subtask, then evaluate) every bar takes the next
planned phase of its name, shows ``[k/n] phase`` and the run's estimated time left: each
phase's remaining units times its own measured seconds per unit, or, for a phase not started
yet, the rate of an earlier phase of the same name (another subtask's experts). Phases with
no measured rate are named in the estimate (``>= 12:30 left, not yet timed: evaluate``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from tqdm.auto import tqdm

_ACTIVE: list[RunProgress] = []


@dataclass
class Phase:
    name: str
    units: int
    done: int = 0
    seconds: float = 0.0
    started: bool = False
    finished: bool = False

    def rate(self) -> float | None:
        return self.seconds / self.done if self.done else None


@dataclass
class RunProgress:
    """The planned phases of a run, in order, and what each has measured so far."""

    phases: list[Phase] = field(default_factory=list)
    current: int = -1

    def add(self, name: str, units: int) -> None:
        if units > 0:
            self.phases.append(Phase(name, units))

    def enter(self, name: str, units: int) -> Phase | None:
        """The phase a new bar of ``name`` feeds: the current one if it has units left, else the
        next planned phase of that name (the planned phases in between were skipped)."""
        if 0 <= self.current < len(self.phases):
            phase = self.phases[self.current]
            if phase.name == name and not phase.finished and phase.done < phase.units:
                return phase
        for i in range(self.current + 1, len(self.phases)):
            if self.phases[i].name == name:
                for skipped in self.phases[max(self.current, 0):i]:
                    skipped.finished = True
                self.current = i
                phase = self.phases[i]
                phase.started = True
                phase.units = units  # what this phase really has to do (a resumed run does less)
                return phase
        return None

    def seconds_left(self) -> tuple[float, list[str]]:
        """Estimated seconds left in the run, and the phases that no measurement covers yet."""
        known = {phase.name: phase.rate() for phase in self.phases if phase.rate() is not None}
        left, untimed = 0.0, []
        for phase in self.phases[max(self.current, 0):]:
            if phase.finished:
                continue
            rate = phase.rate() if phase.rate() is not None else known.get(phase.name)
            if rate is None:
                untimed.append(phase.name)
            else:
                left += rate * max(phase.units - phase.done, 0)
        return left, list(dict.fromkeys(untimed))

    def describe(self) -> str:
        left, untimed = self.seconds_left()
        text = f"run {'>= ' if untimed else ''}{_clock(left)} left"
        return text + (f", not yet timed: {', '.join(untimed)}" if untimed else "")


def _clock(seconds: float) -> str:
    minutes, s = divmod(int(round(seconds)), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}:{m:02d}:{s:02d}" if hours else f"{m}:{s:02d}"


@contextlib.contextmanager
def run_progress(plan: Iterable[tuple[str, int]]) -> Iterator[RunProgress]:
    """Make the loops of this process report into one run-wide display while the block runs."""
    run = RunProgress()
    for name, units in plan:
        run.add(name, units)
    _ACTIVE.append(run)
    try:
        yield run
    finally:
        _ACTIVE.remove(run)


def bar(phase: str, iterable: Iterable | None = None, *, total: int | None = None, initial: int = 0,
        disable: bool = False, **kwargs) -> tqdm:
    """A tqdm bar for one loop of ``phase``; inside ``run_progress`` it is that run's line."""
    run = _ACTIVE[-1] if _ACTIVE else None
    entered = None
    if run is not None and not disable:
        entered = run.enter(phase, (total if total is not None else len(iterable)) - initial)
    if entered is None:
        return tqdm(iterable, total=total, initial=initial, desc=phase, disable=disable, **kwargs)
    label = f"[{run.phases.index(entered) + 1}/{len(run.phases)}] {phase}"
    # leave=False: the next phase takes the same line.
    return PhaseBar(iterable, total=total, initial=initial, desc=label, run=run, phase=entered,
                    **{**kwargs, "leave": False})


class PhaseBar(tqdm):
    """A tqdm bar that times its phase and shows the run's time left."""

    def __init__(self, *args, run: RunProgress, phase: Phase, **kwargs):
        self._run, self._phase, self._label, self._last = run, phase, kwargs["desc"], time.perf_counter()
        super().__init__(*args, **kwargs)

    def _count(self, n: int) -> None:
        now = time.perf_counter()
        self._phase.done += n
        self._phase.seconds += now - self._last
        self._last = now
        self.set_description_str(f"{self._label} | {self._run.describe()}", refresh=False)

    def update(self, n: float = 1) -> bool | None:
        self._count(int(n))
        return super().update(n)

    def __iter__(self):
        for item in super().__iter__():  # tqdm's iterator counts without calling update
            yield item
            self._count(1)

    def close(self) -> None:
        if getattr(self, "_phase", None) is not None and self._phase.done >= self._phase.units:
            self._phase.finished = True
        super().close()
