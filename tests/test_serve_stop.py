"""`nsfwd serve` stops at once on SIGTERM while its models load, also as a container's PID 1
(which ignores a signal it has no handler for); uvicorn takes the signal over once it serves."""

from __future__ import annotations

import os
import signal
import time

import pytest

from nsfwd.serve.server import exit_on_sigterm


def test_sigterm_before_uvicorn_serves_exits_with_status_0() -> None:
    before = signal.getsignal(signal.SIGTERM)
    try:
        exit_on_sigterm()
        with pytest.raises(SystemExit) as exited:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)  # the handler runs before this returns
    finally:
        signal.signal(signal.SIGTERM, before)
    assert exited.value.code == 0
