"""Every Kafka command, as a newcomer meets it without a broker: one line naming the bootstrap
servers and the fix, a non-zero exit within ~10 s; bad arguments are reported before any
connection is tried.

The commands run as real ``freshrec`` processes against a loopback port with nothing
listening, all at once (a module fixture), so the file costs one bootstrap timeout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.processes import free_ports
from freshrec import cli
from freshrec_common import kafka_config
from freshrec_common.settings import load_settings

# name -> the command after the settings flags; FILE stands for a valid event file.
COMMANDS = {
    "produce-generator": ["produce", "--generator", "--count", "5", "--no-progress"],
    "produce-file": ["produce", "FILE", "--no-progress"],
    "tail": ["tail", "--max", "1"],
    "run": ["run"],
    "serve": ["serve"],
    "submit": ["submit"],
}

EVENT = ('{"schema_version":1,"event_id":"e1","event_type":"view","ts":1700000000000,'
         '"user_id":"u1","item_id":"i1"}\n')


@dataclass(frozen=True)
class Ended:
    returncode: int
    stderr: str
    took_s: float


@pytest.fixture(scope="module")
def dead_bootstrap() -> str:
    return f"127.0.0.1:{free_ports(1)[0]}"


@pytest.fixture(scope="module")
def event_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli-errors") / "events.jsonl"
    path.write_text(EVENT)
    return path


@pytest.fixture(scope="module")
def ended(event_file: Path, dead_bootstrap: str) -> dict[str, Ended]:
    """Every command of COMMANDS, run concurrently to its end; and one client in-process."""
    cwd = event_file.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRESHREC_")}
    started = time.monotonic()
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "freshrec.cli",
             "--set", f"kafka.bootstrap_servers={dead_bootstrap}",
             "--set", f"serve.store_dir={cwd / 'store'}", "--set", f"serve.port={free_ports(1)[0]}",
             *[str(event_file) if a == "FILE" else a for a in argv]],
            cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for name, argv in COMMANDS.items()}
    # Meanwhile, in this process: how long a client tries before it gives up.
    settings = load_settings(env={}, overrides=[f"kafka.bootstrap_servers={dead_bootstrap}"])
    tried = time.monotonic()
    try:
        kafka_config.producer(settings)
    except kafka_config.KafkaUnreachable as exc:
        gave_up = Ended(1, str(exc), time.monotonic() - tried)
    out = {"in-process producer": gave_up}
    for name, proc in procs.items():
        _, stderr = proc.communicate(timeout=120)
        out[name] = Ended(proc.returncode, stderr, time.monotonic() - started)
    return out


@pytest.mark.parametrize("name", COMMANDS)
def test_no_broker_is_one_line_naming_the_servers_and_the_fix(
        ended: dict[str, Ended], dead_bootstrap: str, name: str) -> None:
    got = ended[name]
    assert got.returncode == 1, got.stderr
    assert got.stderr.splitlines() == [
        f"freshrec {COMMANDS[name][0]}: no Kafka broker answers at {dead_bootstrap}"
        " (kafka.bootstrap_servers): start the local one with `freshrec kafka up`, or set"
        " kafka.bootstrap_servers (--set or FRESHREC_KAFKA_BOOTSTRAP_SERVERS) to a running broker"]
    # Six processes importing torch and pyflink at once on a small, shared machine: this
    # only guards against a hang. That the clients give up after BOOTSTRAP_TIMEOUT_MS
    # (kafka-python's own default is 30 s) is checked in-process, below.
    assert got.took_s < 90


def test_clients_give_up_after_the_bootstrap_timeout(ended: dict[str, Ended]) -> None:
    got = ended["in-process producer"]
    # Room for a loaded machine, well below kafka-python's own 30 s.
    assert got.took_s < kafka_config.BOOTSTRAP_TIMEOUT_MS / 1000 + 8, got.stderr


@pytest.mark.parametrize(("argv", "code", "message"), [
    (["produce", "no-such.jsonl"], 2, "no such file: no-such.jsonl"),
    (["produce", "FILE", "--format", "rees46"], 2, "not readable as rees46: rees46: header"),
    (["produce", "FILE", "--format", "taobao"], 1, "no row is readable as taobao"),
    (["produce"], 2, "give either FILE or --generator"),
    (["tail", "--max", "0"], 2, "--max must be >= 1"),
    (["submit", "--from-savepoint", "FILE"], 1, "is not a savepoint or checkpoint"),
    (["--set", "job.restore_from=FILE", "run"], 2,
     "bad setting: job.restore_from: {file} is not a checkpoint or savepoint"),
])
def test_bad_arguments_are_refused_before_connecting(
        argv: list[str], code: int, message: str, event_file: Path, dead_bootstrap: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    args = cli.build_parser().parse_args([a.replace("FILE", str(event_file)) for a in argv])
    settings = load_settings(env={}, overrides=[f"kafka.bootstrap_servers={dead_bootstrap}",
                                                *args.overrides])
    started = time.monotonic()
    assert args.func(args, settings) == code
    assert message.format(file=event_file) in capsys.readouterr().err
    assert time.monotonic() - started < 2  # no bootstrap was tried

