"""The certificate-rotation drills' targets: 0 failed transactions (probes and background load), stall <= 1 s."""

from __future__ import annotations

import pytest

from careflow_ha.drills.targets import ROTATION_STALL_S, verdicts
from tests.unit.drills.test_report import make_run


def _by_name(checked):  # noqa: ANN001, ANN202
    return {v.target: v for v in checked}


@pytest.mark.parametrize("name", ["cert-rotation", "ca-rotation"])
def test_a_clean_rotation_passes_and_any_failure_or_long_stall_fails_it(name):
    clean = make_run(outage_end=10.5, refused_write=False)  # 0.5 s between acknowledgements, nothing refused
    ok = _by_name(verdicts(name, "fast", True, clean.analysis, True, load_failures=0))
    assert ok["0 failed transactions"].ok is True
    assert ok[f"worst client stall <= {ROTATION_STALL_S:g} s"].ok is True
    # Each can fail: a refused probe write, a failed background request, a stall over the target.
    refused = make_run(outage_end=10.5)
    assert _by_name(verdicts(name, "fast", True, refused.analysis, True))["0 failed transactions"].ok is False
    loaded = _by_name(verdicts(name, "fast", True, clean.analysis, True, load_failures=3))
    assert loaded["0 failed transactions"].ok is False and "3 load request(s)" in loaded["0 failed transactions"].detail
    stalled = make_run(outage_end=11.5, refused_write=False)
    assert _by_name(verdicts(name, "fast", True, stalled.analysis, True))[
        f"worst client stall <= {ROTATION_STALL_S:g} s"].ok is False


def test_other_drills_get_no_rotation_targets():
    names = {v.target for v in verdicts("primary-node-loss", "fast", True, make_run().analysis, True)}
    assert "0 failed transactions" not in names
