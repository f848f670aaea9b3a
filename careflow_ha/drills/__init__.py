"""Failover drills: break the cluster on purpose and measure, from the client's side, how it recovers.

One job per module:

- the probes and their records live one layer down, in ``cluster/probes.py`` and ``cluster/records.py``:
  the restore drills (``backup/drills.py``) write through the same probe writer.
- ``patroni``: a tiny client for Patroni's REST API (GET /cluster, /history, /config; PATCH, POST).
- ``control``: the ``ClusterControl`` interface a drill needs from the cluster, and its REST implementation.
- ``events``: a bounded poller of ``GET /cluster`` and the role changes derived from it.
- ``faults``: the fault catalogue (inject, heal, description) for every row of the failure model.
- ``checker``: the set checker: every attempted write against the table after healing (lost, ambiguous, ...).
- ``splitbrain``: split brain by writes a node acknowledged while another held the leader key; coverage.
- ``analysis``: pure functions from recorded timelines to outages, lost writes, split brain, phases.
- ``nemesis``: the seeded soak schedule (which fault when, held, healed, settled) from the catalogue.
- ``report``: Markdown + JSON + timeline PNG per run, and the index.
- ``runner``: one drill run end to end: prepare, probe, inject, heal, converge, verify, report.
"""
