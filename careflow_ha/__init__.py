"""CareFlow HA Lab: a Patroni/etcd PostgreSQL HA and partitioning lab for a veterinary EMR."""

__version__ = "0.1.0"
