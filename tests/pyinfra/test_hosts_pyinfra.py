"""tests/cluster/test_hosts.py (testinfra), unchanged, against the pyinfra-built hosts (see conftest)."""

import pytest

from tests.cluster import test_hosts
from tests.pyinfra.conftest import reuse

pytestmark = pytest.mark.pyinfra

globals().update(reuse(test_hosts))
