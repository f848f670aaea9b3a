"""Shared fixtures. Area fixtures live in their own plugin modules listed here.

Order of the suite (CI budget): unit -> localpg -> lab -> cluster -> pyinfra -> drills -> teardown,
by marker (tests/plugins/lab.py), not by folder: unit tests live in tests/unit/<area>/.
"""

pytest_plugins = [
    "tests.plugins.timeouts",
    "tests.plugins.localpg",
    "tests.plugins.lab",
]
