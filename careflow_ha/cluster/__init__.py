"""The running cluster, shared by every feature: the Patroni client, the cluster model, health, the
``/cluster`` watcher, the timing presets and the cluster benchmark.

Nothing here imports a feature (drills, load, archive, ...); they all build on it.
"""
