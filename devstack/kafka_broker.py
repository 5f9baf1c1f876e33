"""A real single-node Apache Kafka (KRaft, combined broker + controller) for development.

``freshrec kafka up|down|status`` and the integration tests use the functions here:

* :func:`broker_up` formats the KRaft storage once, starts ``kafka.Kafka`` as a detached
  background process (own session, pid file in ``local.state_dir``), waits until it answers
  a metadata request and creates the freshrec topics (existing ones get the configs of
  :func:`devstack.kafka_topics.default_topics` where theirs differ). Calling it again is
  safe; a stale pid file (process gone, or the pid now used by another program) is replaced.
* :func:`broker_down` stops it (SIGTERM, then SIGKILL), :func:`broker_status` reports it.

The jars come from :func:`devstack.jars.ensure_jars`; the files the broker keeps are laid
out by :mod:`devstack.kafka_broker_layout`.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from devstack.jars import ensure_jars
from devstack.kafka_broker_layout import (
    MAIN_CLASS,
    BrokerPaths,
    broker_command,
    format_storage,
    render_server_properties,
)
from devstack.kafka_topics import TopicInfo, describe_topics, ensure_topics
from devstack.prerequisites import LocalKafkaError, check_java
from devstack.processes import Log, cmdline, locked, port_in_use, say, stop_processes
from freshrec_common import kafka_config
from freshrec_common.polling import wait_until
from freshrec_common.preexec import die_with_parent

if TYPE_CHECKING:
    from kafka.admin import KafkaAdminClient

    from freshrec_common.settings import Settings

# Brokers started by this process, kept so they are not garbage-collected while running
# (tests start one and stop it in the same process).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class BrokerInfo:
    """A running local broker, as :func:`broker_up` left it."""

    pid: int
    bootstrap: str
    state_dir: Path
    log_file: Path
    already_running: bool
    started_in_s: float
    topics_created: tuple[str, ...] = ()


@dataclass(frozen=True)
class BrokerStatus:
    running: bool
    pid: int | None
    bootstrap: str
    state_dir: Path
    topics: tuple[TopicInfo, ...] = ()
    note: str = ""


def _reap(pid: int) -> None:
    """Collect ``pid`` if it is our own exited child (a broker started by this process)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _is_our_broker(pid: int, paths: BrokerPaths) -> bool:
    """Is ``pid`` alive and a ``kafka.Kafka`` started with this state dir's config?"""
    proc = _CHILDREN.get(pid)
    if proc is not None:  # started by this process: poll() is authoritative (and reaps)
        return proc.poll() is None
    _reap(pid)
    cmd = cmdline(pid)
    return bool(cmd) and MAIN_CLASS in cmd.split() and str(paths.config) in cmd


def _read_pid(paths: BrokerPaths) -> int | None:
    try:
        return int(paths.pid.read_text().strip())
    except (OSError, ValueError):
        return None


def _running_pid(paths: BrokerPaths) -> tuple[int | None, str]:
    """(pid of our running broker or None, a note about a stale pid file)."""
    pid = _read_pid(paths)
    if pid is None:
        if paths.pid.exists():
            return None, f"unreadable pid file {paths.pid} ignored"
        return None, ""
    if _is_our_broker(pid, paths):
        return pid, ""
    if cmdline(pid) is None:
        return None, f"stale pid file (process {pid} is gone)"
    return None, f"stale pid file (pid {pid} now belongs to another program)"


def _listening_address(paths: BrokerPaths, settings: Settings) -> str:
    """host:port the broker of this state dir was started with (its server.properties)."""
    try:
        text = paths.config.read_text("utf-8")
    except OSError:
        text = ""
    m = re.search(r"^advertised\.listeners=PLAINTEXT://(\S+)$", text, re.MULTILINE)
    return m.group(1) if m else f"{settings.local.host}:{settings.local.port}"


def _log_tail(paths: BrokerPaths, lines: int = 25) -> str:
    chunks = []
    for f in (paths.out, paths.logs / "server.log"):
        try:
            text = f.read_text("utf-8", "replace").splitlines()
        except OSError:
            continue
        if text:
            chunks.append(f"  --- {f} (last lines)\n" + "\n".join(f"  {t}" for t in text[-lines:]))
    return "\n".join(chunks) or "  (no broker output)"


def _spawn(cmd: list[str], paths: BrokerPaths, bound_to_caller: bool = False) -> int:
    paths.logs.mkdir(parents=True, exist_ok=True)
    with open(paths.out, "ab") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=paths.state,
            start_new_session=True,  # its own session: no SIGINT/SIGHUP from our terminal
            close_fds=True,
            # A broker started for one command (the demo) stops when that command dies.
            preexec_fn=die_with_parent(signal.SIGTERM) if bound_to_caller else None,
        )
    _CHILDREN[proc.pid] = proc
    tmp = paths.pid.with_suffix(".tmp")
    tmp.write_text(f"{proc.pid}\n")
    os.replace(tmp, paths.pid)
    return proc.pid


def _connect_admin(settings: Settings, timeout_ms: int = 5000) -> KafkaAdminClient:
    from kafka.admin import KafkaAdminClient

    kw = kafka_config.local_broker_kwargs(settings, client_id="freshrec-local-kafka")
    return KafkaAdminClient(**kw, bootstrap_timeout_ms=timeout_ms, request_timeout_ms=timeout_ms)


def _wait_ready(settings: Settings, pid: int, paths: BrokerPaths, timeout_s: float
                ) -> KafkaAdminClient:
    """Wait until the broker answers a metadata request; return a connected admin client."""
    host, port = settings.local.host, settings.local.port
    last_error: Exception | None = None

    def answering() -> KafkaAdminClient | None:
        nonlocal last_error
        if not _is_our_broker(pid, paths):
            proc = _CHILDREN.get(pid)
            code = f" with exit code {proc.returncode}" if proc is not None else ""
            raise LocalKafkaError(
                f"the Kafka broker (pid {pid}) exited during start-up{code}:\n{_log_tail(paths)}"
            )
        if not port_in_use(host, port):
            return None
        try:
            admin = _connect_admin(settings, timeout_ms=3000)
            try:
                admin.list_topics()
                if admin.describe_cluster().get("brokers"):
                    return admin
            except Exception:
                admin.close()
                raise
            admin.close()
        except Exception as exc:  # not ready yet: unreachable, timeouts, ...
            last_error = exc
        return None

    admin = wait_until(answering, timeout_s, interval_s=0.25)
    if admin is None:
        raise LocalKafkaError(
            f"the Kafka broker (pid {pid}) did not answer on {host}:{port} within"
            f" {settings.local.start_timeout_s:.0f}s (local.start_timeout_s); last error:"
            f" {last_error!r}\n{_log_tail(paths)}"
        )
    return admin


def broker_up(settings: Settings, *, log: Log = say, bound_to_caller: bool = False
              ) -> BrokerInfo:
    """Start the local broker if it is not running, then make sure the topics exist.

    ``bound_to_caller``: a broker started here gets SIGTERM when this process ends, however
    it ends (else it runs until ``broker_down``)."""
    started = time.monotonic()
    paths = BrokerPaths.of(settings)
    paths.state.mkdir(parents=True, exist_ok=True)
    with locked(paths.lock):
        pid, note = _running_pid(paths)
        if pid is not None:
            bootstrap = _listening_address(paths, settings)
            log(f"kafka: already running (pid {pid}) on {bootstrap}")
            configured = f"{settings.local.host}:{settings.local.port}"
            if bootstrap != configured:
                log(
                    f"kafka: note: configured for {configured};"
                    " run `freshrec kafka down` first to move it"
                )
                settings = _with_address(settings, bootstrap)
            try:
                admin = _connect_admin(settings)
            except Exception as exc:
                raise LocalKafkaError(
                    f"the broker (pid {pid}) is running but does not answer on {bootstrap}:"
                    f" {exc!r}; see {paths.logs / 'server.log'}, or `freshrec kafka down` and"
                    " `up` again"
                ) from exc
            already = True
        else:
            if note:
                log(f"kafka: {note}; starting a new broker")
                paths.pid.unlink(missing_ok=True)
            java = check_java()
            jars = ensure_jars(settings, log=log)
            loc = settings.local
            for port, key in (
                (loc.port, "local.port"),
                (loc.controller_port, "local.controller_port"),
            ):
                if port_in_use(loc.host, port):
                    raise LocalKafkaError(
                        f"{loc.host}:{port} is already in use by another program (not a broker"
                        f" of {paths.state}); stop it or choose another port with --set {key}=..."
                    )
            paths.data.mkdir(parents=True, exist_ok=True)
            paths.config.write_text(render_server_properties(settings, paths.data), "utf-8")
            format_storage(java, jars, paths, log)
            pid = _spawn(broker_command(settings, java, jars, paths), paths, bound_to_caller)
            bootstrap = f"{loc.host}:{loc.port}"
            log(f"kafka: starting broker (pid {pid}) on {bootstrap}, logs in {paths.logs}")
            try:
                admin = _wait_ready(settings, pid, paths, loc.start_timeout_s)
            except BaseException:
                _stop(pid, paths, timeout_s=10, log=lambda _m: None)
                raise
            already = False
        try:
            created = ensure_topics(settings, admin, log=log)
        except LocalKafkaError:
            raise
        except Exception as exc:  # kafka-python errors: timeouts, policy violations, ...
            raise LocalKafkaError(f"setting up the topics failed: {exc!r}") from exc
        finally:
            admin.close()
    if created:
        log(f"kafka: created topics {', '.join(created)}")
    took = time.monotonic() - started
    if not already:
        log(f"kafka: up on {bootstrap} in {took:.1f}s")
    return BrokerInfo(
        pid=pid,
        bootstrap=bootstrap,
        state_dir=paths.state,
        log_file=paths.logs / "server.log",
        already_running=already,
        started_in_s=took,
        topics_created=tuple(created),
    )


def _with_address(settings: Settings, address: str) -> Settings:
    host, _, port = address.rpartition(":")
    return settings.replace("local", host=host, port=int(port))


def _stop(pid: int, paths: BrokerPaths, *, timeout_s: float, log: Log) -> None:
    if _is_our_broker(pid, paths):
        with contextlib.suppress(psutil.NoSuchProcess):
            stop_processes([psutil.Process(pid)], timeout_s=timeout_s, what="kafka", log=log)
    proc = _CHILDREN.pop(pid, None)
    if proc is not None:
        with contextlib.suppress(Exception):
            proc.wait(timeout=1)
    paths.pid.unlink(missing_ok=True)


def broker_down(settings: Settings, *, timeout_s: float = 30.0, log: Log = say) -> bool:
    """Stop the local broker (SIGTERM, SIGKILL after ``timeout_s``). True if it was running."""
    paths = BrokerPaths.of(settings)
    if not paths.state.is_dir():
        log("kafka: was not running")
        return False
    with locked(paths.lock):
        pid, note = _running_pid(paths)
        if pid is None:
            paths.pid.unlink(missing_ok=True)
            log(f"kafka: was not running{f' ({note}, removed)' if note else ''}")
            return False
        _stop(pid, paths, timeout_s=timeout_s, log=log)
    log(f"kafka: stopped (pid {pid})")
    return True


def broker_status(settings: Settings) -> BrokerStatus:
    """Running or stopped, and the topics with their partitions and non-default configs."""
    paths = BrokerPaths.of(settings)
    pid, note = _running_pid(paths)
    bootstrap = _listening_address(paths, settings)
    if pid is None:
        return BrokerStatus(False, None, bootstrap, paths.state, note=note)
    try:
        admin = _connect_admin(_with_address(settings, bootstrap))
        try:
            topics = tuple(describe_topics(admin))
        finally:
            admin.close()
    except Exception as exc:
        return BrokerStatus(True, pid, bootstrap, paths.state, note=f"not answering yet: {exc!r}")
    return BrokerStatus(True, pid, bootstrap, paths.state, topics=topics, note=note)
