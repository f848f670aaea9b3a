"""The restorable range from ``pgbackrest info --output=json`` and the refusal of a target outside it.

The JSON is pgBackRest 2.45's own (captured from a real run), edited per case.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime

import pytest

from careflow_ha.backup.operations import previous_segments
from careflow_ha.backup.repository import last_commit, parse_info, restorable_range
from careflow_ha.backup.target import RestoreTarget, parse_timestamp
from careflow_ha.errors import CommandFailed, UsageError

T0 = int(datetime(2026, 12, 1, 3, 6, 16, tzinfo=UTC).timestamp())


def _backup(label, type_, start, stop, wal_start, wal_stop, error=False, prior=None):
    return {"archive": {"start": wal_start, "stop": wal_stop}, "backrest": {"format": 5, "version": "2.45"},
            "database": {"id": 1, "repo-key": 1}, "error": error,
            "info": {"delta": 22992565, "repository": {"delta": 2811764, "size": 2811764}, "size": 22992565},
            "label": label, "lsn": {"start": "0/2000028", "stop": "0/2000100"}, "prior": prior, "reference": None,
            "timestamp": {"start": start, "stop": stop}, "type": type_}


INFO = [{
    "archive": [{"database": {"id": 1, "repo-key": 1}, "id": "15-1",
                 "max": "000000010000000000000009", "min": "000000010000000000000002"}],
    "backup": [
        _backup("20261201-030616F", "full", T0, T0 + 6, "000000010000000000000002", "000000010000000000000002"),
        _backup("20261201-030616F_20261201-040000D", "diff", T0 + 3600, T0 + 3610,
                "000000010000000000000006", "000000010000000000000006", prior="20261201-030616F"),
    ],
    "cipher": "none", "db": [{"id": 1, "repo-key": 1, "system-id": 7714465516986987155, "version": "15"}],
    "name": "careflow", "repo": [{"cipher": "none", "key": 1, "status": {"code": 0, "message": "ok"}}],
    "status": {"code": 0, "lock": {"backup": {"held": False}}, "message": "ok"},
}]


def info(**edit) -> str:
    data = copy.deepcopy(INFO)
    for key, value in edit.items():
        data[0][key] = value
    return json.dumps(data)


def at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def test_info_is_read_into_backups_oldest_first():
    stanza = parse_info(info(backup=list(reversed(INFO[0]["backup"]))), "careflow")
    assert [b.label for b in stanza.backups] == ["20261201-030616F", "20261201-030616F_20261201-040000D"]
    full = stanza.backups[0]
    assert (full.type, full.start, full.stop, full.size, full.repo_size) == ("full", at(T0), at(T0 + 6), 22992565,
                                                                              2811764)
    assert (full.delta, full.stored) == (22992565, 2811764)  # what it copied, what it added to the repository
    assert (stanza.wal_min, stanza.wal_max, stanza.status_code) == ("000000010000000000000002",
                                                                     "000000010000000000000009", 0)


def test_the_range_runs_from_the_oldest_backups_end_to_the_newest_commit():
    stanza = parse_info(info(), "careflow")
    newest_commit = at(T0 + 7200)
    span = restorable_range(stanza, newest_commit)
    assert (span.earliest, span.latest) == (at(T0 + 7), newest_commit)  # pgBackRest needs stop < target
    assert (span.oldest_backup, span.newest_backup) == ("20261201-030616F", "20261201-030616F_20261201-040000D")


def test_without_a_known_commit_the_range_ends_at_the_newest_backup():
    span = restorable_range(parse_info(info(), "careflow"))
    assert span.latest == at(T0 + 3610)


def test_the_range_ends_at_the_newest_commit_even_before_the_newest_backup():
    """No commit after T0+100: a target later than that finds no commit to stop at, and PostgreSQL fails it."""
    span = restorable_range(parse_info(info(), "careflow"), at(T0 + 100))
    assert span.latest == at(T0 + 100)
    with pytest.raises(UsageError, match="after the newest archived commit"):
        span.check(RestoreTarget("time", time=at(T0 + 2000)))


def test_no_commit_since_the_oldest_backup_means_only_latest():
    span = restorable_range(parse_info(info(), "careflow"), at(T0 + 3))
    with pytest.raises(UsageError, match="nothing was committed after the oldest backup ended .*; restore with --l"):
        span.check(RestoreTarget("time", time=at(T0 + 7)))


@pytest.mark.parametrize(
    ("backups", "earliest"),
    [
        # a backup with a copy error is not a starting point
        ([_backup("A", "full", T0, T0 + 6, "000000010000000000000002", "000000010000000000000002", error=True),
          _backup("B", "full", T0 + 50, T0 + 60, "000000010000000000000004", "000000010000000000000004")], T0 + 60),
        # nor one whose WAL was expired from the archive (starts before wal_min)
        ([_backup("A", "full", T0, T0 + 6, "000000010000000000000001", "000000010000000000000001"),
          _backup("B", "full", T0 + 50, T0 + 60, "000000010000000000000004", "000000010000000000000004")], T0 + 60),
        # a promotion changes the timeline, not the WAL position: still usable
        ([_backup("A", "full", T0, T0 + 6, "000000020000000000000003", "000000020000000000000003")], T0 + 6),
    ],
)
def test_only_usable_backups_bound_the_range(backups, earliest):
    assert restorable_range(parse_info(info(backup=backups), "careflow")).earliest == at(earliest + 1)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"backup": []},
         "stanza 'careflow' has no backup; take a full backup first \\(pgbackrest --stanza=careflow backup"),
        ({"backup": [_backup("A", "full", T0, T0 + 6, "00000001000000000000000A", "00000001000000000000000A")]},
         "has no backup whose WAL is complete in the archive"),
        ({"archive": []}, "has no backup whose WAL is complete in the archive"),
        ({"backup": [], "status": {"code": 1, "message": "missing stanza path"}},
         "stanza 'careflow': missing stanza path; check the repository path and its permissions"),
    ],
)
def test_nothing_to_restore_is_one_line(edit, message):
    with pytest.raises(UsageError, match=message):
        restorable_range(parse_info(info(**edit), "careflow"))


@pytest.mark.parametrize(
    ("text", "error", "message"),
    [
        ("not json", CommandFailed, "pgbackrest info printed no JSON"),
        ("[]", UsageError, "the repository has no stanza 'careflow'; create it"),
        ('{"name": "careflow"}', UsageError, "no stanza 'careflow'"),
        (json.dumps([{"name": "careflow", "backup": [{"label": "x"}]}]), CommandFailed, "unexpected JSON"),
        (json.dumps([{"name": "careflow", "status": {"code": 0, "message": "ok"},
                      "backup": [_backup("A", "full", "soon", T0, "0" * 24, "0" * 24)]}]), CommandFailed,
         "timestamp.start is not a number"),
    ],
)
def test_unreadable_info_is_one_line(text, error, message):
    with pytest.raises(error, match=message) as err:
        parse_info(text, "careflow")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("to", "refused"),
    [
        ("2026-12-01T03:06:23Z", None),  # a second after the oldest backup's end: the first reachable instant
        ("2026-12-01T05:06:16Z", None),  # the newest commit itself
        ("2026-12-01 12:30", None),  # naive Seoul = 03:30 UTC, inside
        ("2026-12-01T03:06:22Z", "before the oldest backup's end"),  # its stop second itself: pgBackRest refuses
        ("2026-12-01 12:06:16", "before the oldest backup's end"),  # naive Seoul = 03:06:16 UTC: its start
        ("2026-12-01T05:06:17Z", "after the newest archived commit"),
        ("2026-12-01T05:06:16Z", None),
    ],
)
def test_a_time_outside_the_range_is_refused_with_the_range(to, refused):
    span = restorable_range(parse_info(info(), "careflow"), at(T0 + 7200))
    target = RestoreTarget("time", time=parse_timestamp(to))
    if refused is None:
        span.check(target)
        return
    with pytest.raises(UsageError) as err:
        span.check(target)
    message = str(err.value)
    assert refused in message and err.value.exit_code == 2 and "\n" not in message
    # the range, on the clinics' clock with its offset, so the user can pick a time inside it
    assert "the restorable range is 2026-12-01 12:06:23+09:00 .. 2026-12-01 14:06:16+09:00 (Asia/Seoul)" in message


@pytest.mark.parametrize("target", [RestoreTarget("latest"), RestoreTarget("xid", xid=99), RestoreTarget("immediate")])
def test_targets_without_a_time_are_not_placed_on_the_clock(target):
    restorable_range(parse_info(info(), "careflow")).check(target)  # no-op: nothing to compare


WALDUMP = """\
rmgr: Transaction len (rec/tot):     34/    34, tx:        732, lsn: 0/03034478, prev 0/03034438, desc: COMMIT 2026-12-01 22:27:45.488006 UTC
rmgr: Transaction len (rec/tot):     34/    34, tx:        733, lsn: 0/03034500, prev 0/03034478, desc: ABORT 2026-12-01 22:27:59.000000 UTC
rmgr: Transaction len (rec/tot):    226/   226, tx:        734, lsn: 0/03036E88, prev 0/03036E38, desc: COMMIT 2026-12-01 22:27:45.562348 UTC; inval msgs: catcache 63
rmgr: Transaction len (rec/tot):    162/   162, tx:        735, lsn: 0/030393B8, prev 0/03039378, desc: COMMIT 2026-12-01 22:27:46 UTC; subxacts: 736
"""  # noqa: E501 (pg_waldump's own lines, verbatim)


def test_the_last_commit_is_the_newest_commit_record_not_an_abort():
    assert last_commit(WALDUMP) == datetime(2026, 12, 1, 22, 27, 46, tzinfo=UTC)


@pytest.mark.parametrize("text", ["", "pg_waldump: error: could not find a valid record\n",
                                  WALDUMP.replace("COMMIT", "PREPARE")])
def test_no_commit_in_the_dump_is_none(text):
    assert last_commit(text) is None


@pytest.mark.parametrize(
    ("newest", "count", "expected"),
    [
        ("000000010000000000000009", 3,
         ["000000010000000000000009", "000000010000000000000008", "000000010000000000000007"]),
        ("000000010000000200000001", 3,  # across a log boundary: ...0200000000 follows ...01000000FF
         ["000000010000000200000001", "000000010000000200000000", "0000000100000001000000FF"]),
        ("000000010000000000000001", 4, ["000000010000000000000001", "000000010000000000000000"]),  # never below 0
        ("00000003000000000000000A", 1, ["00000003000000000000000A"]),
    ],
)
def test_previous_segments(newest, count, expected):
    assert previous_segments(newest, count) == expected
