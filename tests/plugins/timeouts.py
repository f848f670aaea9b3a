"""One global timeout multiplier for slow machines, and a deadline poller.

Scenario tests poll until a condition holds or a deadline passes; they never
sleep a fixed time. ``CAREFLOW_TIMEOUT_MULTIPLIER`` (default 1.0) stretches
every deadline on a slow or busy box.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")

TIMEOUT_MULTIPLIER = float(os.environ.get("CAREFLOW_TIMEOUT_MULTIPLIER", "1.0"))


def scaled(seconds: float) -> float:
    return seconds * TIMEOUT_MULTIPLIER


def wait_until(condition: Callable[[], T], timeout: float, interval: float = 0.5, what: str = "condition") -> T:
    """Poll ``condition`` until it returns a truthy value or ``timeout`` (scaled) passes.

    Exceptions raised by ``condition`` count as "not yet"; the last one is
    reported if the deadline passes.
    """
    deadline = time.monotonic() + scaled(timeout)
    last_exc: BaseException | None = None
    last_value: T | None = None
    while time.monotonic() < deadline:
        try:
            last_value = condition()
            if last_value:
                return last_value
        except Exception as exc:  # noqa: BLE001 - "not yet" by contract
            last_exc = exc
        time.sleep(interval)
    detail = f"; last error: {last_exc!r}" if last_exc else f"; last value: {last_value!r}"
    pytest.fail(f"{what} did not hold within {scaled(timeout):.0f}s{detail}")
