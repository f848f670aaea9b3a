"""``pgbackrest verify`` read: pgBackRest 2.45 exits 0 on damage, so the verdict comes from its output."""

from __future__ import annotations

import pytest

from careflow_ha.backup.verify import BadFile, parse_verify
from careflow_ha.errors import CheckFailed

#: Captured from pgBackRest 2.45 after one repository file was overwritten and another deleted.
DAMAGED = """\
2026-12-01 22:26:29.280 P00   INFO: verify command begin 2.45: --config=/tmp/pbx/pgbackrest.conf --exec-id=847-85fc9fba --log-level-console=info --log-level-file=off --log-path=/tmp/pbx/log --repo1-path=/tmp/pbx/repo --stanza=t
2026-12-01 22:26:29.738 P01   INFO: invalid checksum '20261201-222616F/pg_data/base/5/1255.zst'
2026-12-01 22:26:29.745 P01   INFO: file missing '20261201-222616F/pg_data/base/5/2659.zst'
2026-12-01 22:26:29.983 P00   INFO: stanza: t
                                    status: error
                                      backup: 20261201-222616F, status: invalid, total files checked: 964, total valid files: 962
                                        missing: 1, checksum invalid: 1
2026-12-01 22:26:29.983 P00   INFO: verify command end: completed successfully (707ms)
"""  # noqa: E501 (pgBackRest's own lines, verbatim)
#: A clean repository with --output=text --verbose (pgBackRest 2.45): the INFO summary, then the text one.
CLEAN = """\
2026-12-01 22:40:55.850 P00   INFO: verify command begin 2.45: --log-level-console=info --output=text --stanza=t --verbose
2026-12-01 22:40:56.357 P00   INFO: stanza: t
                                    status: ok
                                      archiveId: 15-1, total WAL checked: 2, total valid WAL: 2
                                        missing: 0, checksum invalid: 0, size invalid: 0, other: 0
                                      backup: 20261201-222616F, status: valid, total files checked: 964, total valid files: 964
                                        missing: 0, checksum invalid: 0, size invalid: 0, other: 0
stanza: t
status: ok
  archiveId: 15-1, total WAL checked: 2, total valid WAL: 2
    missing: 0, checksum invalid: 0, size invalid: 0, other: 0
  backup: 20261201-222616F, status: valid, total files checked: 964, total valid files: 964
    missing: 0, checksum invalid: 0, size invalid: 0, other: 0
2026-12-01 22:40:56.358 P00   INFO: verify command end: completed successfully (516ms)
"""  # noqa: E501 (pgBackRest's own lines, verbatim)
#: Without --verbose a clean run prints no verdict: that must not pass.
SILENT = """\
2026-12-01 22:40:30.942 P00   INFO: verify command begin 2.45: --log-level-console=info --stanza=t
2026-12-01 22:40:31.509 P00   INFO: verify command end: completed successfully (573ms)
"""
WAL_DAMAGED = CLEAN.replace("status: ok", "status: error").replace(
    "2026-12-01 22:40:56.357 P00   INFO: stanza: t",
    "P02   INFO: invalid size '15-1/0000000100000000/000000010000000000000003-0123456789abcdef.zst'\n"
    "2026-12-01 22:26:29.983 P00   INFO: stanza: t",
)


def test_a_clean_repository_passes():
    result = parse_verify(0, CLEAN)
    assert result.ok and result.bad_files == ()
    result.require_ok()  # no-op


def test_damage_is_named_although_pgbackrest_exits_zero():
    result = parse_verify(0, DAMAGED)
    assert not result.ok and result.status == "error" and result.invalid_backups == ("20261201-222616F",)
    assert result.bad_files == (
        BadFile("invalid checksum", "20261201-222616F/pg_data/base/5/1255.zst"),
        BadFile("file missing", "20261201-222616F/pg_data/base/5/2659.zst"),
    )
    assert {f.backup for f in result.bad_files} == {"20261201-222616F"}
    with pytest.raises(CheckFailed) as err:
        result.require_ok()
    message = str(err.value)
    assert err.value.exit_code == 5 and "\n" not in message
    assert "invalid checksum 20261201-222616F/pg_data/base/5/1255.zst" in message
    assert "file missing 20261201-222616F/pg_data/base/5/2659.zst" in message


def test_a_damaged_wal_segment_is_named_and_belongs_to_no_backup():
    result = parse_verify(0, WAL_DAMAGED)
    (bad,) = result.bad_files
    assert bad.kind == "invalid size" and bad.path.startswith("15-1/") and bad.backup is None
    assert not result.ok


@pytest.mark.parametrize(
    ("code", "output", "says"),
    [
        (0, "", "status missing (exit 0)"),  # nothing printed: never taken for a pass
        (0, SILENT, "status missing (exit 0)"),  # no verdict (verify without --verbose)
        (0, CLEAN.replace("status: valid", "status: invalid"), "backups 20261201-222616F invalid"),
        (56, "ERROR: [056]: unable to find stanza\n", "pgbackrest verify failed (ERROR: [056]: unable to find stanza)"),
        (0, CLEAN.replace("status: ok", "status: error"), "status error"),
        (1, CLEAN, "status ok (exit 1)"),
    ],
)
def test_anything_but_a_clean_pass_fails(code, output, says):
    result = parse_verify(code, output)
    assert not result.ok and says in result.summary()


def test_many_bad_files_are_summarised_on_one_line():
    lines = "".join(f"2026-12-01 00:00:00.000 P01   INFO: file missing 'L/pg_data/f{i}'\n" for i in range(8))
    summary = parse_verify(0, lines + "status: error\n").summary()
    assert "8 damaged or missing file(s)" in summary and "and 3 more" in summary and "\n" not in summary
