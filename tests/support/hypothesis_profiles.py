"""The hypothesis profiles of the suite, chosen by HYPOTHESIS_PROFILE (else "ci" under CI, else "dev"), and
`examples(n)`, the one way a test states its number of examples.

- ci: derandomized. Each test draws the same inputs on every run (seeded from the test's own
  code), so CI passes or fails on the code alone, never on the draw, and a failure there is
  reproduced by running the test again with CI=true. The price is that CI never explores:
  new inputs come from the other two profiles.
- dev (the default elsewhere): random draws on every run, remembered in the local example
  database (.hypothesis/, git-ignored), so a failure found once is replayed first next time.
- thorough: random, ten times the examples of every test (explicit counts included, through
  `examples`): `HYPOTHESIS_PROFILE=thorough ./run-tests tests/core -q`, before a change to a core.

No profile has a deadline: the suite asserts no timings, and a loaded CI machine is slow.
A test's own @settings(max_examples=...) outweighs any profile, hence `examples(n)`.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

SCALE = {"thorough": 10}

settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None)
settings.register_profile("thorough", deadline=None, max_examples=100 * SCALE["thorough"],
                          suppress_health_check=[HealthCheck.too_slow])

PROFILE = os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")


def load() -> None:
    settings.load_profile(PROFILE)


def header() -> str:
    """The line the test log starts with, so that a CI log says how its draws were made."""
    return f"hypothesis profile {PROFILE!r}: {settings.get_profile(PROFILE).show_changed() or 'defaults'}"


def examples(n: int) -> int:
    """`n` examples, times the profile's scale (1 but in the thorough profile)."""
    return n * SCALE.get(PROFILE, 1)
