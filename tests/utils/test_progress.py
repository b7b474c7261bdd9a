"""One progress line for a run, and Ctrl-C that leaves a whole step saved."""

import os
import signal

import pytest

from d3hf.distill.distiller import read_checkpoint
from d3hf.utils import progress
from tests.helpers import make_distiller, tiny_args


def test_phases_follow_the_plan_skip_what_is_done_and_estimate_from_measured_rates(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])

    def work(bar, units, seconds):
        now[0] += seconds
        bar.update(units)

    plan = [("experts", 4), ("warm start", 10), ("distill", 5), ("experts", 4), ("warm start", 10),
            ("distill", 5), ("evaluate", 3), ("evaluate", 3)]
    with progress.run_progress(plan) as run:
        bar = progress.bar("experts", total=4)
        work(bar, 1, 1.0)  # one second per expert epoch, measured
        # 3 epochs left here and 4 in the second subtask, at the measured rate; the rest is untimed.
        assert run.seconds_left() == (7.0, ["warm start", "distill", "evaluate"])
        assert "run >= 0:07 left, not yet timed: warm start, distill, evaluate" in bar.desc
        work(bar, 3, 3.0)
        bar.close()
        # The first subtask's warm start was done before a restart: its bar never opens.
        bar = progress.bar("distill", total=5, initial=3)  # a resumed run: 2 iterations left
        assert run.phases[run.current].units == 2 and run.phases[1].finished
        work(bar, 2, 2.0)
        bar.close()
        assert run.seconds_left() == (4.0 + 5.0, ["warm start", "evaluate"])
        for name, total in (("experts", 4), ("warm start", 10), ("distill", 5)):
            bar = progress.bar(name, total=total)
            work(bar, total, total)
            bar.close()
        for _ in progress.bar("evaluate", range(3), total=3):
            now[0] += 1.0
        assert run.phases[run.current].name == "evaluate" and run.phases[run.current].done == 3
        assert run.seconds_left() == (3.0, [])  # the second network, at the first one's rate
    assert progress._ACTIVE == []


def test_outside_a_run_a_bar_is_a_plain_bar():
    bar = progress.bar("experts", total=3, disable=True)
    assert not isinstance(bar, progress.PhaseBar)
    bar.close()


def test_ctrl_c_waits_for_the_step_and_saves_it(digits, digits_buffer, tmp_path, monkeypatch):
    distiller = make_distiller(digits, digits_buffer, tiny_args(iterations=5))
    step = distiller.step

    def step_then_ctrl_c():
        record = step()
        if distiller.iteration == 2:
            os.kill(os.getpid(), signal.SIGINT)  # arrives while the step is finishing
        return record

    monkeypatch.setattr(distiller, "step", step_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        distiller.run(5, checkpoint_dir=str(tmp_path), show_progress=False)
    assert distiller.iteration == 2
    assert read_checkpoint(str(tmp_path))["iteration"] == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored

    resumed = make_distiller(digits, digits_buffer, tiny_args(iterations=5))
    assert resumed.load_checkpoint(str(tmp_path)) and resumed.iteration == 2
    resumed.run(5, checkpoint_dir=str(tmp_path), show_progress=False)
    assert resumed.iteration == 5
