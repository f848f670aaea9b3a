"""Observability without a dashboard server: alert rules, slow queries and plans, capacity planning.

Layer: a feature. It may use ``careflow_ha.data`` (the EMR layer), errors and
settings, never another feature (drills, load, archive): it reads their
reports as files instead.
"""
