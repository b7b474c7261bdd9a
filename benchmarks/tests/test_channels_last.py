"""benchmarks/channels_last.py: both layouts run both kinds of step and are timed."""

import pytest

from benchmarks import channels_last


@pytest.mark.parametrize("kind", ["unroll", "sgd"])
def test_both_layouts_are_timed(kind):
    seconds = channels_last.time_case(kind, (3, 8, 8), 4, repeats=1)
    assert set(seconds) == {"nchw", "channels_last"} and all(s > 0 for s in seconds.values())
