"""Shared fixtures. Area fixtures live in their own plugin modules listed here.

Order of the suite (CI budget): unit -> localpg -> lab -> cluster -> drills.
"""

pytest_plugins = [
    "tests.plugins.timeouts",
    "tests.plugins.localpg",
    "tests.plugins.lab",
]
