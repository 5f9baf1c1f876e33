"""The process supervisor (devstack.processes) and the stop signals (freshrec.signals) with
small real processes, no JVM: stop signals, children bound to their parent, bounded stops,
the job lock."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from devstack.processes import AlreadyRunning, hold_lock, kill_tree, stop_processes

REPO_ROOT = Path(__file__).resolve().parents[3]
# How long a signalled process may take to end: seconds on a CI machine busy with JVMs (a
# 10 s bound once ran out there), far below the sleeps the signal has to cut short.
EXIT_WAIT = 60


def python(code: str, **kwargs) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def wait_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line, proc.stderr.read() if proc.stderr else ""
    return line


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_each_stop_signal_runs_the_cleanup_and_exits_128_plus_its_number(sig: int) -> None:
    proc = python("""
        import sys, time
        from freshrec.signals import STOP, Stopped, exit_code
        STOP.install()
        try:
            print("ready", flush=True)
            time.sleep(600)
        except KeyboardInterrupt as exc:  # Stopped is one: Ctrl-C paths serve every signal
            assert isinstance(exc, Stopped)
            print(f"cleanup after {STOP.name}", flush=True)
            sys.exit(exit_code(STOP.signum))
    """)
    assert wait_line(proc) == "ready"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=EXIT_WAIT)
    assert proc.returncode == 128 + sig, err
    assert out.strip() == f"cleanup after {signal.Signals(sig).name}"


def test_deferred_signals_only_set_the_flag_and_later_ones_are_noted() -> None:
    proc = python("""
        import time
        from freshrec.signals import STOP
        STOP.install()
        with STOP.deferred():
            print("ready", flush=True)
            assert STOP.requested.wait(30)
            print(f"requested by {STOP.name}", flush=True)
        time.sleep(2)  # a second signal, outside the block, does not raise either
        print("stopped in order", flush=True)
    """)
    assert wait_line(proc) == "ready"
    proc.send_signal(signal.SIGTERM)
    assert wait_line(proc) == "requested by SIGTERM"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=EXIT_WAIT)
    assert proc.returncode == 0, err
    assert out.strip() == "stopped in order"
    assert "SIGINT received; already stopping" in err


def test_a_child_bound_to_its_parent_dies_when_the_parent_is_killed() -> None:
    parent = python("""
        import signal, subprocess, time
        from freshrec_common.preexec import die_with_parent
        child = subprocess.Popen(["sleep", "120"], start_new_session=True,
                                 preexec_fn=die_with_parent(signal.SIGKILL))
        print(child.pid, flush=True)
        time.sleep(120)
    """)
    child = psutil.Process(int(wait_line(parent)))
    assert child.is_running() and child.name() == "sleep"
    parent.kill()
    parent.wait(timeout=10)
    _, alive = psutil.wait_procs([child], timeout=5)
    assert alive == [], "the child outlived its SIGKILLed parent"


def test_stop_processes_kills_what_ignores_sigterm_after_the_bound() -> None:
    polite = python("import time; print('ready', flush=True); time.sleep(60)")
    stubborn = python("""
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", flush=True)
        time.sleep(60)
    """)
    for proc in (polite, stubborn):
        assert wait_line(proc) == "ready"
    said: list[str] = []
    procs = [psutil.Process(polite.pid), psutil.Process(stubborn.pid)]
    started = time.monotonic()
    killed = stop_processes(procs, timeout_s=1.0, what="test", log=said.append)
    assert time.monotonic() - started < 5
    assert [p.pid for p in killed] == [stubborn.pid]
    # psutil reaped them (our children) and kept how they ended.
    assert [p.returncode for p in procs] == [-signal.SIGTERM, -signal.SIGKILL]
    assert len(said) == 1, said
    assert said[0].startswith("test: ")
    assert said[0].endswith(f"(pid {stubborn.pid}) still running 1s after SIGTERM; killing it")


def test_kill_tree_ends_a_process_and_what_it_started() -> None:
    parent = python("""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print(child.pid, flush=True)
        time.sleep(60)
    """)
    child = psutil.Process(int(wait_line(parent)))
    said: list[str] = []
    kill_tree(parent.pid, what="test", log=said.append, timeout_s=5)
    assert parent.wait(timeout=5) is not None
    _, alive = psutil.wait_procs([child], timeout=5)
    assert alive == [] and said == []


def test_a_held_lock_names_its_holder_and_dies_with_it(tmp_path: Path) -> None:
    lock = tmp_path / "job.lock"
    holder = python(f"""
        import time
        from pathlib import Path
        from devstack.processes import hold_lock
        hold_lock(Path({str(lock)!r}), "the test's job")
        print("held", flush=True)
        time.sleep(60)
    """)
    assert wait_line(holder) == "held"
    with pytest.raises(AlreadyRunning, match=rf"^pid {holder.pid} since .*, the test's job$"):
        hold_lock(lock, "a second copy")
    holder.kill()
    holder.wait(timeout=10)
    checker = python(f"""
        from pathlib import Path
        from devstack.processes import hold_lock
        hold_lock(Path({str(lock)!r}), "the next run")
        print("held", flush=True)
    """)
    assert wait_line(checker) == "held"
    checker.communicate(timeout=10)
    assert "the next run" in lock.read_text()
