"""Load a generated EMR data set through COPY, with a progress bar.

The whole load is one transaction: a failure leaves the tables as they were.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import psycopg
from tqdm import tqdm

from careflow_ha.data.db import connect
from careflow_ha.data.generator import KST, RESULT_COLUMNS, VISIT_COLUMNS, DataSpec, build_world, iter_chunks_ahead
from careflow_ha.data.partitions import ensure_coverage
from careflow_ha.errors import EnvironmentProblem, UsageError

EMR_TABLES = ("lab_results", "lab_results_daily", "visits", "pets", "owners", "vets", "clinics")
#: The data set ``careflow-ha up`` loads: small enough for well under a minute through port 5000.
DEMO_SPEC = DataSpec(rows=200_000, clinics=6, months=12, seed=2026)


@dataclass(frozen=True)
class LoadSummary:
    rows: int
    visits: int
    pets: int
    owners: int
    clinics: int
    months: int
    seconds: float
    copy_seconds: float
    #: The primary's WAL position just after the load's commit, and when (epoch s): what replicas must reach.
    commit_lsn: str = ""
    committed_at: float = 0.0

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.copy_seconds if self.copy_seconds else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        del d["commit_lsn"], d["committed_at"]
        d.update(seconds=round(self.seconds, 1), copy_seconds=round(self.copy_seconds, 1),
                 rows_per_s=round(self.rows_per_s))
        return d


def copy_rows(cur: psycopg.Cursor, table: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
    """COPY a list of tuples into ``table``."""
    cols = ", ".join(columns)
    with cur.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:  # noqa: S608 - fixed identifiers
        for row in rows:
            copy.write_row(row)


def load(dsn: str, spec: DataSpec, *, replace: bool = False, progress: bool = True) -> LoadSummary:
    """Generate ``spec`` and COPY it into the EMR tables at ``dsn`` (app role).

    Refuses to mix with existing data unless ``replace`` (which truncates the
    EMR tables first). Creates any month or clinic partitions the window needs
    through pg_partman, then refreshes the daily aggregate for the window.
    """
    spec = spec.validated()
    t0 = time.monotonic()
    world = build_world(spec)
    with connect(dsn) as conn, conn.cursor() as cur:
        if cur.execute("SELECT to_regclass('public.lab_results')").fetchone()[0] is None:
            raise EnvironmentProblem("the EMR schema is missing; run `careflow-ha data migrate` first")
        existing = cur.execute("SELECT count(*) FROM clinics").fetchone()[0]
        if existing and not replace:
            raise UsageError(f"the EMR tables already hold data ({existing} clinics); add --replace (asks first, "
                             "or --force) to truncate them and load a fresh data set")
        if existing:
            cur.execute("TRUNCATE " + ", ".join(EMR_TABLES))
        ensure_coverage(conn, spec.window_start.date(), [c[0] for c in world.clinics])
        # (inserting clinics also fires ensure_clinic_leaves: every month gets their leaves)
        copy_rows(cur, "clinics", ("clinic_id", "name", "city", "address", "phone", "opened_on"), world.clinics)
        copy_rows(cur, "vets", ("vet_id", "clinic_id", "name", "license_no", "specialty"), world.vets)
        copy_rows(cur, "owners", ("owner_id", "clinic_id", "name", "phone", "address", "email"), world.owners)
        copy_rows(cur, "pets", ("pet_id", "owner_id", "clinic_id", "name", "species", "breed", "sex", "birth_date",
                                "weight_kg"), world.pets)
        visits, copy_s = 0, 0.0
        bar = tqdm(total=spec.rows, unit="rows", unit_scale=True, desc="lab_results", disable=not progress,
                   smoothing=0.1)
        with bar:
            for chunk in iter_chunks_ahead(world, spec):  # generated in a child while this process COPYs
                c0 = time.monotonic()
                copy_rows(cur, "visits", VISIT_COLUMNS, chunk.visits)
                with cur.copy(f"COPY lab_results ({', '.join(RESULT_COLUMNS)}) FROM STDIN (FORMAT csv)") as copy:
                    copy.write(chunk.results_csv)
                copy_s += time.monotonic() - c0
                visits += len(chunk.visits)
                bar.update(chunk.n_results)
        assert spec.end is not None
        last_day = spec.end.astimezone(KST).date()  # aggregate days are Seoul days, not UTC ones
        cur.execute("SELECT refresh_lab_results_daily(%s::date, %s::date + 1)", (spec.window_start.date(), last_day))
        conn.commit()
        committed_at = time.time()
        commit_lsn = cur.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
        conn.rollback()
    with connect(dsn, autocommit=True) as conn:
        conn.execute("ANALYZE clinics, vets, owners, pets, visits, lab_results")
    return LoadSummary(rows=spec.rows, visits=visits, pets=len(world.pets), owners=len(world.owners),
                       clinics=spec.clinics, months=spec.months, seconds=time.monotonic() - t0, copy_seconds=copy_s,
                       commit_lsn=commit_lsn, committed_at=committed_at)


def load_demo(dsn: str, *, progress: bool = False) -> LoadSummary:
    """Load the small demo data set (200k lab results, 6 clinics, 12 months) unless data is present.

    For ``careflow-ha up`` on the cluster (app role DSN through port 5000):
    idempotent, so a second ``up`` leaves existing data alone.
    """
    with connect(dsn) as conn:
        if conn.execute("SELECT to_regclass('public.clinics')").fetchone()[0] is not None and \
                conn.execute("SELECT EXISTS (SELECT 1 FROM clinics)").fetchone()[0]:
            return LoadSummary(0, 0, 0, 0, 0, 0, 0.0, 0.0)
    return load(dsn, DEMO_SPEC, progress=progress)
