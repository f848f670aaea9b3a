"""tests/cluster/test_pooler_cluster.py, unchanged, against the pyinfra-built cluster (see conftest)."""

import pytest

from tests.cluster import test_pooler_cluster
from tests.pyinfra.conftest import reuse

pytestmark = pytest.mark.pyinfra

globals().update(reuse(test_pooler_cluster))
