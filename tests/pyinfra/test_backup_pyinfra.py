"""tests/cluster/test_backup_cluster.py, unchanged, against the pyinfra-built hosts: the stanza, archiving,
the timers and the backup verbs must work whichever provisioner built them."""

import pytest

from tests.cluster import test_backup_cluster
from tests.pyinfra.conftest import reuse

pytestmark = pytest.mark.pyinfra

globals().update(reuse(test_backup_cluster))
