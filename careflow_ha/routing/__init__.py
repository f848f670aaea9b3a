"""The ways in to the primary, measured side by side: ``careflow-ha bench routing``.

Layer: a feature. It uses ``cluster/`` (pgbench, Patroni) and the settings'
ways in (``settings.WAYS_IN``); the drills' outage figures reach it as plain
numbers from the CLI, never by importing the drills feature.
"""
