"""prepare/migrate guard rails that need no server: the preload check names the setting to fix; DSNs are redacted."""

from __future__ import annotations

import pytest

from careflow_ha.data.db import _check_preload, _yoyo_uri
from careflow_ha.dsn import redact
from careflow_ha.errors import EnvironmentProblem


class FakeConn:
    """Answers the two SHOW-like queries _check_preload makes (the driver is the boundary we mock)."""

    def __init__(self, preload: str, cron_db: str | None, workers: str = "on") -> None:
        self.answers = iter([preload, cron_db, workers])

    def execute(self, _query: str) -> FakeConn:
        self.value = next(self.answers)
        return self

    def fetchone(self) -> tuple:
        return (self.value,)


@pytest.mark.parametrize(
    ("preload", "cron_db", "message"),
    [
        ("", None, "lacks pg_cron; add it"),
        ("pg_partman_bgw", None, "lacks pg_cron"),
        ("pg_cron", "postgres", "cron.database_name is 'postgres'; set it to 'careflow'"),
        ("pg_partman_bgw, pg_cron", None, "cron.database_name is None"),
    ],
)
def test_missing_server_settings_are_named(preload, cron_db, message):
    with pytest.raises(EnvironmentProblem, match=message.replace("(", r"\(")):
        _check_preload(FakeConn(preload, cron_db), "careflow")


def test_good_settings_pass_quietly(caplog):
    _check_preload(FakeConn("pg_partman_bgw,pg_cron", "careflow"), "careflow")
    assert caplog.records == []


def test_jobs_without_background_workers_are_warned_about(caplog):
    _check_preload(FakeConn("pg_cron", "careflow", "off"), "careflow")
    assert "cron.use_background_workers is 'off'" in caplog.text


def test_redact_hides_the_password_and_keeps_the_rest():
    shown = redact("postgresql://careflow_app:s3cr%40t@127.0.0.1:5000/careflow?connect_timeout=5")
    assert "s3cr" not in shown
    assert "password=***" in shown and "port=5000" in shown and "user=careflow_app" in shown


def test_yoyo_uri_keeps_credentials_and_options():
    uri = _yoyo_uri("host=127.0.0.1 port=5000 user=careflow_app password=a/b@c dbname=careflow connect_timeout=5")
    assert uri == "postgresql+psycopg://careflow_app:a%2Fb%40c@127.0.0.1:5000/careflow?connect_timeout=5"
