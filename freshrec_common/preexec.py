"""``preexec_fn`` helpers binding a child process's life to ours (no psutil: the job's
client uses them to launch its JVM)."""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets ``sig`` from the kernel the moment this process
    ends, however it ends, SIGKILL included (Linux ``PR_SET_PDEATHSIG``).

    The kernel sends it when the *thread* that started the child ends, so start children
    from the main thread. Elsewhere than Linux there is no such call and the child is not
    bound (docs/operations.md).
    """
    parent = os.getpid()
    # Looked up now: the child between fork and exec must not load libraries.
    prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)

    def preexec() -> None:
        if prctl is None:
            return
        prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died between fork and prctl
            os.kill(os.getpid(), sig)

    return preexec


def chain_preexec(*fns: Callable[[], None] | None) -> Callable[[], None]:
    """One ``preexec_fn`` running each given one in turn."""

    def preexec() -> None:
        for fn in fns:
            if fn is not None:
                fn()

    return preexec
