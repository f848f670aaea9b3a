"""An import whose connection dies at the worst moments converges on a rerun: every good row exactly once.

What a failover does to a client, without the lab: a TCP proxy between the
importer and the local server cuts the connection

- while COPY streams the staged rows (the backend is terminated with
  pg_terminate_backend from another connection);
- after the rows are in, just before COMMIT reaches the server (terminated
  the same way): the batch did not commit;
- after the server committed, before the client sees the reply (the reply
  is swallowed and the connection closed): the ambiguous commit, where the
  client cannot know.

In each case the importer exits 3 saying a rerun is safe; the rerun imports
the file, or refuses it naming the batch that did commit; a --force run after
that loads nothing; and each good row is in lab_results exactly once.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
from datetime import datetime, timedelta

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from tests.cli import run_cli
from tests.data.test_import_localpg import SEOUL, fresh_when
from tests.plugins.timeouts import wait_until

pytestmark = pytest.mark.localpg
GOOD_ROWS = 240


class CuttingProxy:
    """127.0.0.1 TCP proxy to the server that breaks the first client connection at ``moment``.

    Bounded: one listening socket, two pump threads per client, socket timeouts, closed by ``stop()``.
    """

    def __init__(self, server_port: int, moment: str, superuser_dsn: str, app_name: str) -> None:
        self.server_port, self.moment, self.superuser_dsn, self.app_name = server_port, moment, superuser_dsn, app_name
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cut = threading.Event()
        self.commit_forwarded = threading.Event()
        self._threads: list[threading.Thread] = []
        self._spawn(self._accept)

    def _spawn(self, target, *args) -> None:  # noqa: ANN001
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        self.listener.settimeout(60)
        try:
            while not self.cut.is_set():
                client, _ = self.listener.accept()
                server = socket.create_connection(("127.0.0.1", self.server_port), timeout=60)
                client.settimeout(60)
                self._spawn(self._client_to_server, client, server)
                self._spawn(self._server_to_client, server, client)
        except OSError:
            return

    def _terminate_backend(self) -> None:
        """pg_terminate_backend on the importer's backend, from another connection; wait until it is gone."""
        with psycopg.connect(self.superuser_dsn, autocommit=True) as conn:
            pids = [r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                                               (self.app_name,))]
            assert pids, "the importer's backend should be connected"
            for pid in pids:
                conn.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))

    def _close(self, *socks: socket.socket) -> None:
        self.cut.set()
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _client_to_server(self, client: socket.socket, server: socket.socket) -> None:
        try:
            while data := client.recv(65536):
                if self.moment == "during COPY" and b"COPY import_stage" in data:
                    server.sendall(data)
                    self._terminate_backend()
                    return self._close(client, server)
                if b"COMMIT\x00" in data:
                    if self.moment == "before COMMIT":
                        self._terminate_backend()
                        return self._close(client, server)
                    self.commit_forwarded.set()
                server.sendall(data)
        except OSError:
            pass
        self._close(client, server)

    def _server_to_client(self, server: socket.socket, client: socket.socket) -> None:
        try:
            while data := server.recv(65536):
                if self.moment == "after COMMIT, reply lost" and self.commit_forwarded.is_set() \
                        and b"COMMIT\x00" in data:  # CommandComplete "COMMIT": the server has committed
                    return self._close(client, server)
                client.sendall(data)
        except OSError:
            pass
        self._close(client, server)

    def stop(self) -> None:
        self.cut.set()
        self.listener.close()
        for thread in self._threads:
            thread.join(timeout=10)


def import_file(tmp_path, pets, moment: str):
    """A file of GOOD_ROWS good rows and 2 bad ones; returns (path, [(pet_id, collected_at)] of the good ones)."""
    good = [(pets[i % len(pets)][0], fresh_when()) for i in range(GOOD_ROWS)]
    lines = ["pet_id,test_code,collected_at,value"] + [f"{p},ALT,{w},42" for p, w in good]
    lines += [f"{good[0][0]},ALT,not-a-date,42", f"{good[0][0]},NOPE,{fresh_when()},1"]
    path = tmp_path / f"cut-{moment.split()[0].lower()}.csv"
    path.write_text("\n".join(lines) + "\n")
    return path, good


def copies_of(dsn: str, good: list[tuple[int, str]]) -> list[int]:
    """How many times each good row is in lab_results."""
    with psycopg.connect(dsn) as conn:
        found = dict(conn.execute(
            "SELECT r.pet_id::text || ' ' || to_char(r.collected_at AT TIME ZONE 'Asia/Seoul', "
            "'YYYY-MM-DD HH24:MI:SS'), count(*) FROM lab_results r WHERE r.test_code = 'ALT' AND r.pet_id = ANY(%s) "
            "AND r.collected_at >= %s GROUP BY 1",
            ([p for p, _ in good], datetime.now(SEOUL) - timedelta(days=30))).fetchall())
    return [found.get(f"{p} {w}", 0) for p, w in good]


def backends(superuser_dsn: str, app_name: str, waiting_on_a_lock: bool = False) -> int:
    with psycopg.connect(superuser_dsn, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND "
                            "(NOT %s OR wait_event_type = 'Lock')", (app_name, waiting_on_a_lock)).fetchone()[0]


def batches_for(dsn: str, sha256: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT batch_id, forced, rows_loaded, rows_duplicate, rows_quarantined FROM "
                            "lab_import_batches WHERE sha256 = %s ORDER BY batch_id", (sha256,)).fetchall()


@pytest.fixture(scope="module")
def pets(emr):
    with psycopg.connect(emr.app_dsn) as conn:
        return conn.execute("SELECT pet_id FROM pets WHERE birth_date < now() - interval '2 years' "
                            "ORDER BY pet_id DESC LIMIT 40").fetchall()


@pytest.mark.parametrize("moment", ["during COPY", "before COMMIT", "after COMMIT, reply lost"])
def test_a_rerun_after_a_cut_connection_leaves_every_good_row_exactly_once(emr, local_pg, pets, tmp_path, moment):
    path, good = import_file(tmp_path, pets, moment)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    app_name = "careflow-import-cut-" + moment.split()[0].lower()
    proxy = CuttingProxy(local_pg.port, moment, emr.superuser_dsn, app_name)
    try:
        cut_dsn = make_conninfo(emr.app_dsn, host="127.0.0.1", port=str(proxy.port), application_name=app_name,
                                sslmode="disable", gssencmode="disable")
        first = run_cli("data", "import", str(path), "--dsn", cut_dsn)
    finally:
        proxy.stop()
    assert first.code == 3, first.err
    assert "Traceback" not in first.err and "Run the same command again" in first.err
    committed = moment == "after COMMIT, reply lost"
    assert ("it may or may not have committed" in first.err) == (moment != "during COPY")
    # Wait until the server has finished with the cut backend (its rollback, or its commit).
    wait_until(lambda: not backends(emr.superuser_dsn, app_name), timeout=30, what="the cut backend to be gone")
    assert len(batches_for(emr.app_dsn, sha)) == (1 if committed else 0), "a batch commits whole or not at all"
    assert copies_of(emr.app_dsn, good) == [1 if committed else 0] * GOOD_ROWS

    rerun = run_cli("data", "import", str(path), "--dsn", emr.app_dsn)
    if committed:
        assert rerun.code == 2 and "nothing imported" in rerun.err, rerun.err
        assert f"as batch {batches_for(emr.app_dsn, sha)[0][0]}," in rerun.err
    else:
        assert rerun.code == 0, rerun.err
        assert f"{GOOD_ROWS + 2} rows, {GOOD_ROWS} loaded, 0 already present (skipped), 2 quarantined" in rerun.out
    forced = run_cli("data", "import", str(path), "--dsn", emr.app_dsn, "--force")
    assert forced.code == 0, forced.err
    assert f"0 loaded, {GOOD_ROWS} already present (skipped), 2 quarantined" in forced.out

    assert copies_of(emr.app_dsn, good) == [1] * GOOD_ROWS, "every good row exactly once"
    (_, forced_first, loaded, dup, bad), (_, forced_second, *_rest) = batches_for(emr.app_dsn, sha)
    assert (forced_first, forced_second, loaded, dup, bad) == (False, True, GOOD_ROWS, 0, 2)


def test_two_concurrent_imports_of_one_file_load_it_once(emr, pets, tmp_path):
    """The second waits on the unique batch index, then is refused naming the first (no duplicates either way)."""
    path, good = import_file(tmp_path, pets, "concurrent")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    blocker = psycopg.connect(emr.app_dsn)
    # Hold the batch's slot in an open transaction, as an import in progress does.
    blocker.execute("INSERT INTO lab_import_batches (file_name, sha256, rows_total, rows_loaded, rows_quarantined) "
                    "VALUES ('in-progress.csv', %s, 0, 0, 0)", (sha,))
    results = {}
    app_name = "careflow-import-concurrent"
    dsn = make_conninfo(emr.app_dsn, application_name=app_name)
    runner = threading.Thread(
        target=lambda: results.setdefault("r", run_cli("data", "import", str(path), "--dsn", dsn)), daemon=True)
    runner.start()
    wait_until(lambda: backends(emr.superuser_dsn, app_name, waiting_on_a_lock=True), timeout=30,
               what="the second import to wait on the batch index")
    blocker.commit()
    blocker.close()
    runner.join(timeout=60)
    result = results["r"]
    assert result.code == 2 and "from in-progress.csv" in result.err, result.err
    assert copies_of(emr.app_dsn, good) == [0] * GOOD_ROWS  # the holder loaded none; the second none either
