"""The set checker: every write the probe attempted against the table as it stands after healing.

Jepsen's set checker, for the drill probe. Each attempt carries what the
client knows of its fate (acknowledged, certainly not applied, or unknown);
the final table is read once, after the cluster healed, as a multiset of
seqs. Every element of attempted ∪ observed falls in exactly one class:

- ok: acknowledged and present once;
- lost: acknowledged and absent (the number that must be 0 in synchronous mode);
- duplicated: present more than once, whatever the attempt said;
- unexpected: present once, never attempted;
- refused_present: the client knows it was not applied (no connection, or
  the server's ERROR), yet it is present;
- ambiguous_present / ambiguous_absent: the outcome was unknown (timed out,
  connection dropped mid-commit, sync wait cut short, in flight at the end),
  and this is how it resolved. Reported apart, never counted as lost;
- refused_absent: not applied and absent, as the client was told (no anomaly).

The probe table's primary key (run_id, seq) makes a duplicate impossible in
one healthy table; the checker still counts them instead of trusting the
schema, because a restore, a merge of two timelines or a lost key is exactly
the kind of failure it exists to catch.

Pure: no I/O, so every rule is tested on hand-made and generated histories.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from careflow_ha.cluster.records import DEFINITE_FAILURE_KINDS, Recording

WriteOutcome = Literal["acked", "refused", "ambiguous"]

#: The report's classes, in the order a reader wants them (the anomalies first).
ANOMALY_CLASSES = ("lost", "duplicated", "unexpected", "refused_present")
CLASSES = (*ANOMALY_CLASSES, "ambiguous_present", "ambiguous_absent", "ok", "refused_absent")


@dataclass(frozen=True)
class WriteAttempt:
    """One write the probe tried (``seq`` is its attempt id, unique in the run) and what the client knows."""

    seq: int
    outcome: WriteOutcome


@dataclass(frozen=True)
class SetCheck:
    """The classes of attempted ∪ observed (each a sorted tuple of seqs; together a partition)."""

    ok: tuple[int, ...] = ()
    lost: tuple[int, ...] = ()
    duplicated: tuple[int, ...] = ()
    unexpected: tuple[int, ...] = ()
    refused_present: tuple[int, ...] = ()
    ambiguous_present: tuple[int, ...] = ()
    ambiguous_absent: tuple[int, ...] = ()
    refused_absent: tuple[int, ...] = ()

    @property
    def ambiguous(self) -> int:
        return len(self.ambiguous_present) + len(self.ambiguous_absent)

    @property
    def anomalies(self) -> int:
        """Rows that contradict what the client was told: lost, duplicated, unexpected, refused yet present."""
        return sum(len(getattr(self, name)) for name in ANOMALY_CLASSES)

    def counts(self) -> dict[str, int]:
        """Every class with its size, in report order."""
        return {name: len(getattr(self, name)) for name in CLASSES}


class InconsistentAttempts(ValueError):
    """The probe recorded two fates for one attempt id: a probe bug, never a cluster result."""


def check_set(attempts: Iterable[WriteAttempt], present: Iterable[int]) -> SetCheck:
    """Classify every attempted or observed seq; ``present`` holds one seq per row read back."""
    fate: dict[int, WriteOutcome] = {}
    for attempt in attempts:
        known = fate.setdefault(attempt.seq, attempt.outcome)
        if known != attempt.outcome:
            # Guessing which record is right would make the checker's verdict a guess too.
            raise InconsistentAttempts(f"write attempt {attempt.seq} recorded as both {known} and {attempt.outcome}")
    rows = Counter(present)
    classes: dict[str, list[int]] = {name: [] for name in CLASSES}
    for seq in fate.keys() | rows.keys():
        copies = rows.get(seq, 0)
        outcome = fate.get(seq)
        if copies > 1:
            name = "duplicated"
        elif outcome is None:
            name = "unexpected"
        elif outcome == "acked":
            name = "ok" if copies else "lost"
        elif outcome == "ambiguous":
            name = "ambiguous_present" if copies else "ambiguous_absent"
        else:
            name = "refused_present" if copies else "refused_absent"
        classes[name].append(seq)
    return SetCheck(**{name: tuple(sorted(seqs)) for name, seqs in classes.items()})


def attempts_of(rec: Recording) -> tuple[WriteAttempt, ...]:
    """Every write the probe writer attempted in ``rec``, with its fate as the client knows it."""
    out = [WriteAttempt(a.seq, "acked") for a in rec.writes]
    for error in rec.write_errors:
        out.append(WriteAttempt(error.seq, "refused" if error.kind in DEFINITE_FAILURE_KINDS else "ambiguous"))
    out.extend(WriteAttempt(seq, "ambiguous") for seq in rec.writes_in_flight)
    return tuple(out)


def describe_set_check(check: SetCheck) -> str:
    """One line for progress output: the anomalies first, then how the ambiguous writes resolved."""
    return (
        f"lost {len(check.lost)}, unexpected {len(check.unexpected)}, duplicated {len(check.duplicated)}, "
        f"refused yet present {len(check.refused_present)}, ambiguous {check.ambiguous} "
        f"({len(check.ambiguous_present)} present, {len(check.ambiguous_absent)} absent), ok {len(check.ok)}"
    )
