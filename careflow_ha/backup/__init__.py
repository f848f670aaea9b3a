"""Backups and point-in-time recovery with pgBackRest (issue 14): the parts that need no lab.

Modules, one job each:

- ``target``: parse ``--to TIMESTAMP | --before-xid N | --latest`` into a ``RestoreTarget``
  (naive times are Asia/Seoul, the clinics' clock) and its ``pgbackrest restore`` options.
- ``repository``: read ``pgbackrest info --output=json``; the restorable range and the refusal of a
  target outside it.
- ``verify``: read ``pgbackrest verify`` (which exits 0 even on damage) so a bad file is named.
- ``commands``: the pgBackRest command lines (backup full|diff|incr, from a standby; restore; check;
  info; verify; archive_command / restore_command) and a local runner.
- ``operations``: the above against a real repository (range with the newest archived commit, verify).
- ``bench``: pgBackRest backup throughput and restore time next to pg_basebackup, same run.

Layer: a feature. It uses data/ (the clinic clock, the local server) and the foundation, never
another feature.
"""
