"""The watchdog that bounds tests waiting on other processes: it must end the wait and fail."""

from __future__ import annotations

import subprocess
import sys

import pytest

from waiting import watchdog


def test_the_watchdog_stops_what_the_test_waits_on_and_fails_it(
    capfd: pytest.CaptureFixture[str],
) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with pytest.raises(AssertionError, match=r"ran past 0\.5 s"), watchdog(0.5, sleeper.kill):
            sleeper.wait(timeout=30)  # would wait 60 s without the watchdog
        assert sleeper.returncode is not None and sleeper.returncode < 0
        assert "test_waiting.py" in capfd.readouterr().err  # the stacks, to find the hang
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_block_that_ends_in_time_is_left_alone() -> None:
    called: list[bool] = []
    with watchdog(5, lambda: called.append(True)):
        pass
    assert not called
