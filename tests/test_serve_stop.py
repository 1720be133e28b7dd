"""`nsfwd serve` stops at once on SIGTERM while its models load, also as a container's PID 1
(which ignores a signal it has no handler for); uvicorn takes the signal over once it serves."""

from __future__ import annotations

import os
import signal
import time

import pytest

from nsfwd.serve.server import sigterm_exits


def test_sigterm_while_the_models_load_exits_with_143_and_the_handler_is_restored() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exited, sigterm_exits():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)  # the handler runs before this returns
    assert exited.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
