"""EMR data: schema migrations, partition maintenance, synthetic data and CSV import.

The three entry points ``careflow-ha up`` calls on the cluster, in order:

- :func:`prepare_database` (superuser DSN): database, extensions, grants;
- :func:`migrate` (app DSN through port 5000): the versioned schema;
- :func:`load_demo` (app DSN through port 5000): a small demo data set.
"""

from careflow_ha.data.db import migrate, prepare_database
from careflow_ha.data.loader import load_demo

__all__ = ["load_demo", "migrate", "prepare_database"]
