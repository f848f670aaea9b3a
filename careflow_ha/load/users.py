"""Locust users for the EMR: reception and lab write through 5000, vets and analysts read through 5001.

Imported only by loadtests/locustfile.py (importing Locust monkey-patches the
process for gevent). Configuration comes from the environment that
``careflow-ha load`` sets, so ``--processes`` workers see the same values:

- ``CAREFLOW_LOAD_DSN_RW`` / ``CAREFLOW_LOAD_DSN_RO``: libpq URIs (never logged);
- ``CAREFLOW_LOAD_RUN_DIR``: where each process writes ``requests-<pid>.csv``;
- ``CAREFLOW_LOAD_PROFILE``: a name from profiles.PROFILES (user mix and shape);
- ``CAREFLOW_LOAD_THINK_SCALE``: multiplies every think time (default 1);
- ``CAREFLOW_LOAD_NODES``: ``address=node,...`` so the log names the node that answered.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Callable
from typing import Any

import gevent
import gevent.lock
import psycopg
from locust import LoadTestShape, User, between, events, task

from careflow_ha.load import emr
from careflow_ha.load.client import Backoff, PgSession, node_names_from_env, request_log, short_error
from careflow_ha.load.profiles import DEFAULT_WEIGHTS, PROFILES, OperationDeck

PROFILE = PROFILES.get(os.environ.get("CAREFLOW_LOAD_PROFILE", "steady"), PROFILES["steady"])
THINK = float(os.environ.get("CAREFLOW_LOAD_THINK_SCALE", "1") or 1)
_user_numbers = itertools.count(1)


def _think(low: float, high: float) -> Callable[[Any], float]:
    return between(low * THINK, high * THINK)


class _Ids:
    """The process-wide id pool, loaded once (retried with backoff while the server is away)."""

    pool: emr.IdPool | None = None
    lock = gevent.lock.Semaphore()
    backoff = Backoff(first=0.5, cap=5.0)

    @classmethod
    def get(cls, user: EmrUser) -> emr.IdPool | None:
        if cls.pool is not None:
            return cls.pool
        with cls.lock:
            if cls.pool is None:
                try:
                    cls.pool = emr.load_ids(user.dsn_for("ro") or user.dsn_for("rw"))
                except (psycopg.Error, OSError, emr.NoData) as exc:
                    user.environment.events.request.fire(
                        request_type="setup", name="setup.load_ids", response_time=0, response_length=0,
                        exception=RuntimeError(short_error(exc)), context={})
                    gevent.sleep(cls.backoff.next_delay())
        return cls.pool


class EmrUser(User):
    """Abstract psycopg user: one connection to its endpoint, every operation timed and logged."""

    abstract = True
    endpoint = "rw"
    #: name -> (operation, weight): the user's mix, dealt by an OperationDeck (see profiles.py for why
    #: not Locust's weighted @task choice).
    operations: dict[str, tuple[Callable[[psycopg.Connection, emr.IdPool, random.Random], Any], int]] = {}

    @staticmethod
    def dsn_for(endpoint: str) -> str:
        return os.environ.get(f"CAREFLOW_LOAD_DSN_{endpoint.upper()}", "")

    def on_start(self) -> None:
        self.rng = random.Random()
        self.deck = OperationDeck({name: weight for name, (_, weight) in self.operations.items()}, self.rng)
        self.user_no = os.getpid() * 100_000 + next(_user_numbers)
        self.session = PgSession(self.dsn_for(self.endpoint), self.endpoint, self.user_no,
                                 self.environment.events.request.fire, request_log(), node_names_from_env())

    def on_stop(self) -> None:
        self.session.close()
        log = request_log()
        if log is not None:
            log.flush()

    @task
    def next_operation(self) -> None:
        name = self.deck.deal()
        self.op(name, self.operations[name][0])

    def op(self, name: str, fn: Callable[[psycopg.Connection, emr.IdPool, random.Random], Any]) -> Any:
        pool = _Ids.get(self)
        if pool is None:
            return None
        return self.session.request(name, lambda conn: fn(conn, pool, self.rng))


class ReceptionUser(EmrUser):
    """Front desk (5000): new clients now and then, returning patients mostly."""

    endpoint = "rw"
    weight = PROFILE.weights["reception"]
    wait_time = _think(1.0, 3.0)
    operations = {
        "reception.register_owner_pet": (emr.register_owner_pet, 1),
        "reception.open_visit": (emr.open_visit, 4),
    }


class LabUser(EmrUser):
    """The in-house analyser (5000): posts a panel of results for a visit."""

    endpoint = "rw"
    weight = PROFILE.weights["lab"]
    wait_time = _think(1.0, 3.0)
    operations = {"lab.post_results": (emr.post_results, 1)}


class VetUser(EmrUser):
    """A vet in the consulting room (5001): history, trends, today's abnormal results."""

    endpoint = "ro"
    weight = PROFILE.weights["vet"]
    wait_time = _think(0.5, 2.0)
    operations = {
        "vet.patient_history": (emr.patient_history, 3),
        "vet.lab_trend": (emr.lab_trend, 2),
        "vet.abnormal_today": (emr.abnormal_today, 1),
    }


class AnalystUser(EmrUser):
    """Head office (5001): clinic daily aggregates, breed and age patterns."""

    endpoint = "ro"
    weight = PROFILE.weights["analyst"]
    wait_time = _think(2.0, 5.0)
    operations = {
        "analyst.clinic_daily": (emr.clinic_daily, 2),
        "analyst.breed_age_patterns": (emr.breed_age_patterns, 1),
    }


class EmrShape(LoadTestShape):
    """The profile's shape, scaled by ``--users``, ``--spawn-rate`` and ``--run-time``."""

    use_common_options = True

    def tick(self) -> tuple[int, float] | None:
        opts = self.runner.environment.parsed_options
        users = int(getattr(opts, "num_users", None) or 1)
        rate = float(getattr(opts, "spawn_rate", None) or 1)
        duration = float(getattr(opts, "run_time", None) or 60)
        target = PROFILE.users_at(self.get_run_time(), duration, users)
        if target is None:
            return None
        # A spike must arrive as one: spawn it at once, whatever --spawn-rate says.
        return target, max(rate, float(users)) if PROFILE.shape == "spike" else rate


@events.quitting.add_listener
def _flush_log(environment: Any, **_: Any) -> None:
    log = request_log()
    if log is not None:
        log.close()


__all__ = ["AnalystUser", "DEFAULT_WEIGHTS", "EmrShape", "EmrUser", "LabUser", "ReceptionUser", "VetUser"]
