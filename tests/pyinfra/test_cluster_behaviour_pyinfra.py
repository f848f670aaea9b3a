"""tests/cluster/test_cluster_behaviour.py, unchanged, against the pyinfra-built cluster (see conftest)."""

import pytest

from tests.cluster import test_cluster_behaviour
from tests.pyinfra.conftest import reuse

pytestmark = pytest.mark.pyinfra

globals().update(reuse(test_cluster_behaviour))
