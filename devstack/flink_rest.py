"""The REST API of the local Flink cluster's JobManager."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from devstack.flink_config import rest_url
from freshrec_common.settings import Settings


def rest_get(settings: Settings, path: str, timeout: float = 15.0) -> Any:
    """GET a REST API path (``/overview``, ``/jobs/<id>``...) and decode the JSON."""
    with urllib.request.urlopen(rest_url(settings) + path, timeout=timeout) as resp:
        return json.loads(resp.read())


def overview(settings: Settings) -> dict[str, Any] | None:
    """``/overview`` of the JobManager, None when it does not answer."""
    try:
        return rest_get(settings, "/overview", timeout=3.0)
    except (OSError, ValueError):
        return None


def job_detail(settings: Settings, job_id: str) -> dict[str, Any]:
    return rest_get(settings, f"/jobs/{job_id}")


def subtask_hosts(settings: Settings, job_id: str) -> dict[str, set[str]]:
    """vertex name -> the TaskManager ids its subtasks run on (REST ``/vertices/<vid>``)."""
    out: dict[str, set[str]] = {}
    for vertex in job_detail(settings, job_id).get("vertices", []):
        detail = rest_get(settings, f"/jobs/{job_id}/vertices/{vertex['id']}")
        out[vertex["name"]] = {
            st.get("taskmanager-id") or st.get("host", "?") for st in detail.get("subtasks", [])}
    return out
