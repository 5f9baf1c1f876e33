"""Hypothesis profiles: ``dev``, the default, keeps the fuzz tests quick while iterating;
``ci`` runs them as thoroughly as they are written (``.ci/run`` sets
``FRESHREC_HYPOTHESIS_PROFILE=ci``). Registered for the whole run by the root conftest."""

from __future__ import annotations

import os

from hypothesis import settings

PROFILE = os.environ.get("FRESHREC_HYPOTHESIS_PROFILE", "dev")
DEV_SHARE = 10  # dev runs a tenth of a fuzz test's examples

settings.register_profile("ci", max_examples=100)
settings.register_profile("dev", max_examples=100 // DEV_SHARE)
settings.load_profile(PROFILE)  # an unknown name fails the run at once


def examples(thorough: int) -> int:
    """How many examples a fuzz test written for ``thorough`` runs under this profile."""
    return thorough if PROFILE == "ci" else max(thorough // DEV_SHARE, 10)
