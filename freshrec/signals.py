"""How every ``freshrec`` command reacts to SIGTERM, SIGINT and SIGHUP, and its exit codes
(docs/operations.md, "Stopping and signals")."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator

# Exit codes of the commands that run until stopped (docs/operations.md, "Stopping and
# signals").
EXIT_REFUSED = 75  # another process holds the same job state (EX_TEMPFAIL: retry later)
EXIT_FORCED = 124  # the stop overran its bound: children were killed
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def exit_code(signum: int) -> int:
    """The shell's convention for a command ended by a signal: 128 + its number."""
    return 128 + signum


class Stopped(KeyboardInterrupt):
    """The first stop signal, raised in the main thread. A KeyboardInterrupt, so every
    Ctrl-C cleanup path (``finally``, ``except KeyboardInterrupt``) serves SIGTERM and SIGHUP."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """SIGTERM, SIGINT and SIGHUP all mean "stop cleanly", for every command.

    The first one sets :attr:`requested` and raises :class:`Stopped` in the main thread,
    except inside :meth:`deferred`, where code polls :attr:`requested` between calls that
    must not be torn in the middle (calls into the Flink JVM). Later signals only say that
    the stop is under way: the stop's bound, not a repeated Ctrl-C, decides when children
    are killed.
    """

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.signum: int | None = None
        self.received_at = 0.0  # time.monotonic() of the first signal
        self._deferred = 0

    def install(self) -> StopSignals:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)
        return self

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "no signal"

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None:
            # os.write, not print: the main thread may be inside a print already.
            os.write(2, f"freshrec: {signal.Signals(signum).name} received; already stopping"
                        "\n".encode())
            return
        self.signum, self.received_at = signum, time.monotonic()
        self.requested.set()
        if not self._deferred:
            raise Stopped(signum)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Signals only set :attr:`requested` inside this block."""
        self._deferred += 1
        try:
            yield
        finally:
            self._deferred -= 1


# The process's one handler; ``freshrec.cli.main`` installs it for every command.
STOP = StopSignals()
