"""The dev stack's process supervisor (built on psutil): stopping a group of processes within
a bound (:func:`stop_processes`), finding a process by its command line, the lock that keeps
a second copy of a job from starting (:func:`hold_lock`), and loopback ports.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

import psutil

Log = Callable[[str], None]


def say(message: str) -> None:
    """A progress line of a command, flushed at once (its output may be a log file)."""
    print(message, flush=True)


def describe(proc: psutil.Process) -> str:
    try:
        return f"{proc.name()} (pid {proc.pid})"
    except psutil.Error:
        return f"pid {proc.pid}"


def children() -> list[psutil.Process]:
    """Every live descendant of this process."""
    return psutil.Process().children(recursive=True)


def process_tree(pid: int) -> list[psutil.Process]:
    """``pid`` and its live descendants (empty when it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def stop_processes(procs: Sequence[psutil.Process], *, timeout_s: float, what: str,
                   log: Log, ask: Callable[[psutil.Process], None] = psutil.Process.terminate,
                   asked: str = "SIGTERM") -> list[psutil.Process]:
    """Ask each process to end (``ask``: SIGTERM by default), wait up to ``timeout_s`` for all
    of them, SIGKILL the rest (saying so). Returns the processes that had to be killed.

    psutil checks a process's start time before signalling it, so a pid reused by another
    program meanwhile is never hit."""
    live = [p for p in procs if p.is_running()]
    for p in live:
        with contextlib.suppress(psutil.NoSuchProcess):
            ask(p)
    _, stubborn = psutil.wait_procs(live, timeout=max(timeout_s, 0.0))
    for p in stubborn:
        log(f"{what}: {describe(p)} still running {timeout_s:.0f}s after {asked}; killing it")
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(stubborn, timeout=10)
    return stubborn


def kill_tree(pid: int, *, what: str, log: Log, timeout_s: float = 30.0) -> None:
    """SIGKILL a process and everything it started (a test's or a benchmark's child, which
    needs no clean stop), and wait for them."""
    stop_processes(process_tree(pid), timeout_s=timeout_s, what=what, log=log,
                   ask=psutil.Process.kill, asked="SIGKILL")


class AlreadyRunning(RuntimeError):
    """Another live process holds the lock; the message is what it wrote about itself."""


_HELD: list[IO[str]] = []  # open lock files: the kernel releases them when this process ends


def hold_lock(path: Path, about: str) -> None:
    """Hold an exclusive lock on ``path`` until this process ends, and write who holds it.

    flock(2) locks end with the process however it ends (SIGKILL included), so a crash never
    leaves a stale lock behind. Raises :class:`AlreadyRunning` naming the holder (pid, since
    when) when another process has it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")  # noqa: SIM115 - held open for the life of the process
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip()
        fh.close()
        raise AlreadyRunning(holder or f"a process holding {path}") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {about}\n")
    fh.flush()
    _HELD.append(fh)


def cmdline(pid: int) -> str | None:
    """The command line of ``pid`` (its args joined by spaces), None if gone; an exited but
    unreaped process (a zombie) counts as gone."""
    try:
        proc = psutil.Process(pid)
        if proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return None
        return " ".join(proc.cmdline())
    except psutil.NoSuchProcess:  # ZombieProcess included
        return None
    except psutil.AccessDenied:  # another user's process: alive, command unknown
        return ""


_HANDED_OUT: set[int] = set()
_RANDOM = random.SystemRandom()  # never the global generator, which a test may have seeded


def _ephemeral_low() -> int:
    """Lowest local port of outgoing connections (Linux's setting; else IANA's range)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 49152


def free_ports(n: int, avoid: tuple[int, ...] = (9092, 9093, 9249)) -> list[int]:
    """``n`` distinct loopback ports that were free a moment ago (never the defaults of the
    local broker and metrics, so a developer's own stack is left alone).

    They come from below the ephemeral range: a server binds them seconds later, and in
    between any outgoing connection could take a port from that range (a broker restarted
    on its old port has clients reconnecting to it all along)."""
    low = min(_ephemeral_low(), 32768)
    if low < 16000:  # no room below the ephemeral range: the kernel's pick
        return _kernel_ports(n, avoid)
    pool = range(15000, low)
    candidates = _RANDOM.sample(pool, k=min(4 * n + 64, len(pool)))
    ports: list[int] = []
    for port in candidates:
        if len(ports) == n:
            break
        if port in avoid or port in _HANDED_OUT:  # handed out, maybe not bound yet
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
    _HANDED_OUT.update(ports)
    if len(ports) < n:
        raise RuntimeError(f"no {n} free loopback ports between 15000 and {low}")
    return ports


def _kernel_ports(n: int, avoid: tuple[int, ...]) -> list[int]:
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            port = s.getsockname()[1]
            if port not in avoid and port not in ports:
                ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (concurrent `up`s, parallel test sessions)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)

