"""A one-time task failure for failure-recovery tests and drills.

``FRESHREC_INJECT_FAULT=<events>:<marker file>`` in the environment of the process running
the tasks (the MiniCluster, or a TaskManager) makes the user-update task that applies its
``<events>``-th event raise, once: the marker file records that the fault happened, so the
restarted task runs on. Unset (the default) costs one ``None`` check per event.

>>> InjectedFault.from_env({})
>>> fault = InjectedFault.from_env({ENV_VAR: "3:/tmp/x"})
>>> fault.after_events, str(fault.marker)
(3, '/tmp/x')
>>> InjectedFault.from_env({ENV_VAR: "soon"})
Traceback (most recent call last):
...
ValueError: FRESHREC_INJECT_FAULT: expected <events>:<marker file>, got 'soon'
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "FRESHREC_INJECT_FAULT"


class InjectedFaultError(RuntimeError):
    """The deliberate failure; Flink restarts the job from its latest checkpoint."""


@dataclass
class InjectedFault:
    after_events: int
    marker: Path
    fired: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> InjectedFault | None:
        value = (os.environ if env is None else env).get(ENV_VAR, "")
        if not value:
            return None
        count, sep, marker = value.partition(":")
        if not sep or not count.isdigit() or not marker:
            raise ValueError(f"{ENV_VAR}: expected <events>:<marker file>, got {value!r}")
        return cls(int(count), Path(marker))

    def check(self, applied: int) -> None:
        """Raise once, when ``applied`` reaches the threshold and no earlier run has fired."""
        if self.fired or applied < self.after_events:
            return
        self.fired = True
        try:
            # O_EXCL: with several subtasks only the first to get here fails.
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        raise InjectedFaultError(f"injected fault after {applied} events ({ENV_VAR})")
