"""No object that holds a DSN or a password shows it in ``repr()`` or ``str()`` (pytest prints both on failure).

Every class in the package and in the test fixtures that keeps a DSN, a
password or the secrets is built here with a known secret. Plain classes keep
``object``'s repr; dataclasses mark those fields ``repr=False``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from careflow_ha.archive.archiver import Archiver
from careflow_ha.archive.bench import WriteLoad
from careflow_ha.archive.store import LocalStore
from careflow_ha.backup.commands import LocalRunner, Pgbackrest
from careflow_ha.backup.local import LocalRepository
from careflow_ha.cluster.probes import NodeSampler, ProbeReader, ProbeWriter
from careflow_ha.data.importer import ImportSummary
from careflow_ha.data.localserver import LocalPostgres
from careflow_ha.load.client import PgSession
from careflow_ha.load.runner import LoadConfig
from careflow_ha.settings import SECRET_KEYS, load_settings
from tests.archive.conftest import ArchiveDb
from tests.data.conftest import SPEC, Emr
from tests.drills.conftest import RestartablePg
from tests.drills.test_runner_localpg import OneNodeControl
from tests.plugins.localpg import LocalPg

SECRET = "Sup3r-s3cret-Passw0rd"
DSN = f"postgresql://careflow_app:{SECRET}@127.0.0.1:5000/careflow?connect_timeout=5"


def server() -> LocalPostgres:
    return LocalPostgres(Path("/tmp/x"), 5999, passwords={"superuser": SECRET, "app": SECRET, "ro": SECRET})


BUILDERS = {
    "Settings": lambda tmp: load_settings(tmp, environ=dict.fromkeys(SECRET_KEYS, SECRET)),
    "LocalPostgres": lambda tmp: server(),
    "LocalPg": lambda tmp: LocalPg(server()),
    "Emr": lambda tmp: Emr(DSN, DSN, DSN, SPEC),
    "ArchiveDb": lambda tmp: ArchiveDb(DSN, DSN),
    "LoadConfig": lambda tmp: LoadConfig(users=1, spawn_rate=1, duration_s=1, dsn_rw=DSN, dsn_ro=DSN,
                                         reports_dir=tmp),
    "PgSession": lambda tmp: PgSession(DSN, "rw", 1, None, None),
    "WriteLoad": lambda tmp: WriteLoad(DSN, 1, 1, 1),
    "Archiver": lambda tmp: Archiver(DSN, LocalStore(tmp), progress=False),
    "ProbeWriter": lambda tmp: ProbeWriter(DSN, "run-1"),
    "ProbeReader": lambda tmp: ProbeReader(DSN),
    "NodeSampler": lambda tmp: NodeSampler("pg1", DSN),
    "OneNodeControl": lambda tmp: OneNodeControl(DSN),
    "RestartablePg": lambda tmp: RestartablePg(tmp, 5999),
    "ImportSummary": lambda tmp: ImportSummary(file="x.csv"),
    "LocalRunner": lambda tmp: LocalRunner(env={"PGPASSWORD": SECRET}),
    "LocalRepository": lambda tmp: LocalRepository(tmp, server(), Pgbackrest("s"),
                                                   LocalRunner(env={"PGPASSWORD": SECRET})),
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_repr_and_str_hide_the_secret(name, tmp_path):
    obj = BUILDERS[name](tmp_path)
    for shown in (repr(obj), str(obj)):
        assert SECRET not in shown, f"{name} shows a secret: {shown[:80]}..."


def test_the_fixture_dataclasses_still_say_what_they_are():
    """The repr stays useful: it names the class and the non-secret fields."""
    assert "spec=DataSpec(rows=30000" in repr(Emr(DSN, DSN, DSN, SPEC))
    assert "port=5999" in repr(LocalPg(server()))
