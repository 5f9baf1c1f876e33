"""Small process and port helpers shared by the local stacks (Kafka broker, Flink cluster)."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import random
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path


def cmdline(pid: int) -> str | None:
    """The command line of ``pid`` (NUL-separated args joined by spaces), None if gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return None
    except OSError:
        raw = b""
    if raw:
        return raw.replace(b"\0", b" ").decode("utf-8", "replace")
    if Path("/proc").is_dir():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        state = stat.rpartition(")")[2].split()[:1]
        return None if state in (["Z"], ["X"]) else ""  # exited-but-unreaped counts as gone
    try:  # no procfs (macOS)
        out = subprocess.run(
            ["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, check=False
        )
    except OSError:
        return None
    return out.stdout.strip() or None


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


def settings_args(args: argparse.Namespace) -> list[str]:
    """The global ``--config``/``--set`` flags, to hand the same settings to a child process."""
    out: list[str] = []
    if getattr(args, "config", None):
        out += ["--config", str(Path(args.config).resolve())]
    for item in getattr(args, "overrides", []) or []:
        out += ["--set", item]
    return out
