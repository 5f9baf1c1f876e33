"""Load the versioned JSON Schema files shipped in this package."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any


@cache
def load_schema(name: str) -> dict[str, Any]:
    """Parse ``schemas/<name>`` (e.g. ``event.v1.json``)."""
    return json.loads(resources.files("schemas").joinpath(name).read_text("utf-8"))
