"""Run N psycopg sessions at once under Locust's gevent patching; print timings as JSON.

Executed in a subprocess by test_load_localpg.py: importing Locust
monkey-patches the whole process, which the pytest process must not be.
Usage: python gevent_probe.py N SECONDS  (DSN in CAREFLOW_LOAD_DSN_RW)
"""

import json
import os
import sys
import time

import gevent
import locust  # noqa: F401 - before psycopg: monkey-patches for gevent, as in a real Locust run

from careflow_ha.load.client import PgSession


def main() -> None:
    n, seconds = int(sys.argv[1]), float(sys.argv[2])
    sessions = [PgSession(os.environ["CAREFLOW_LOAD_DSN_RW"], "rw", i, None, None) for i in range(n)]
    for s in sessions:  # connect first: only the sleeps are timed
        s.request("connect", lambda conn: conn.execute("SELECT 1"))
    latencies: list[float] = []

    def one(s: PgSession) -> None:
        t = time.perf_counter()
        s.request("sleep", lambda conn: conn.execute("SELECT pg_sleep(%s)", (seconds,)))
        latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    gevent.joinall([gevent.spawn(one, s) for s in sessions], timeout=n * seconds + 30)
    elapsed = time.perf_counter() - t0
    for s in sessions:
        s.close()
    print(json.dumps({"elapsed": elapsed, "latencies": latencies}))


if __name__ == "__main__":
    main()
