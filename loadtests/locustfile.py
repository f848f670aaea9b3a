"""CareFlow EMR traffic for Locust: reception and lab write through 5000, vets and analysts read through 5001.

Run it with ``careflow-ha load ...`` (which sets the DSNs, the run folder and
the profile, then writes the report). By hand::

    CAREFLOW_LOAD_DSN_RW=postgresql://... CAREFLOW_LOAD_DSN_RO=postgresql://... \\
        locust -f loadtests/locustfile.py --headless -u 20 -r 5 -t 60s

The users, operations and shapes live in ``careflow_ha.load`` (users.py,
emr.py, profiles.py); this file only hands them to Locust.
"""

import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project, when not pip-installed

# careflow-ha stops Locust with SIGINT (Ctrl+C), its one graceful stop that still writes the
# reports. A process started from a background job of a non-interactive shell (`cmd &` in a
# script or a CI runner) inherits SIGINT as *ignored*, and Python then installs no
# KeyboardInterrupt handler, so Locust would ignore the stop and be killed without its reports.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

from careflow_ha.load.users import AnalystUser, EmrShape, LabUser, ReceptionUser, VetUser  # noqa: E402

__all__ = ["AnalystUser", "EmrShape", "LabUser", "ReceptionUser", "VetUser"]
