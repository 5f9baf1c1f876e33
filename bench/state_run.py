"""One fill of the state benchmark (:mod:`bench.bench_state`): the fill job on fresh topics,
its checkpoints and the JVM's memory, read while it runs."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import CHILD_ENV, REPO_ROOT, java_pid, rss_mib, sample_sums
from bench.common import scrape as scrape_families
from devstack.processes import kill_tree
from freshrec_common.polling import wait_until


def say(msg: str) -> None:
    """Progress on stderr, so stdout keeps only the table and verdicts."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def scrape(port: int) -> dict[str, float]:
    """Prometheus samples of the job, ``name`` -> summed value (over subtasks)."""
    return sample_sums(scrape_families(port))


def rest(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return json.loads(r.read())


def heap_after_gc_mib(pid: int) -> float | None:
    """Heap used after a full GC: live objects, i.e. the hashmap backend's state on heap."""
    try:
        subprocess.run(["jcmd", str(pid), "GC.run"], capture_output=True, timeout=180,
                       check=True)
        info = subprocess.run(["jcmd", str(pid), "GC.heap_info"], capture_output=True,
                              text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in info.splitlines():
        if "used" in line and "total" in line:  # " garbage-first heap   total 123K, used 45K"
            used = line.split("used", 1)[1].split()[0].rstrip(",")
            return int(used.rstrip("K")) / 1024
    return None


def dir_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):  # a file removed meanwhile
                total += os.lstat(os.path.join(root, f)).st_size
    return total


def preload(kwargs: dict[str, Any], topic: str, n: int) -> float:
    from kafka import KafkaProducer

    prod = KafkaProducer(**kwargs, acks=1, linger_ms=20, batch_size=512 * 1024)
    t0 = time.perf_counter()
    for k in range(n):
        prod.send(topic, value=b"%d" % k)
        if k and k % 200_000 == 0:
            say(f"  pre-loading {topic}: {k:,}/{n:,}")
    prod.flush(timeout=300)
    prod.close(timeout=10)
    took = time.perf_counter() - t0
    say(f"pre-loaded {n:,} records into {topic} in {took:.1f}s")
    return took


@dataclass
class RunPlan:
    backend: str
    users: int
    items: int
    users_topic: str
    items_topic: str


class FillRun:
    """One fill job: start, wait for the fill, measure the next checkpoint, stop."""

    def __init__(self, plan: RunPlan, args: argparse.Namespace, base_sets: list[str],
                 work: Path) -> None:
        from devstack.processes import free_ports

        self.plan, self.args = plan, args
        self.tag = f"{plan.backend}-{plan.users}-{uuid.uuid4().hex[:6]}"
        self.dir = work / self.tag
        self.dir.mkdir(parents=True)
        # RocksDB names its LOG file after the full path of its instance directory (in the
        # job's flink-logs/): a long io.tmp.dirs makes that name exceed 255 bytes.
        self.tmp = Path(tempfile.mkdtemp(prefix="fbs-", dir="/tmp"))
        self.metrics_port, self.rest_port = free_ports(2)
        rocks = plan.backend.startswith("rocksdb")
        self.sets = [*base_sets,
                     f"job.state_backend={'rocksdb' if rocks else 'hashmap'}",
                     f"job.checkpoint_dir={self.dir / 'checkpoints'}",
                     f"job.metrics_port={self.metrics_port}", "job.parallelism=1",
                     f"job.group_id=bench-state-{self.tag}"]
        self.flink = [f"execution.checkpointing.incremental="
                      f"{'true' if plan.backend == 'rocksdb-incremental' else 'false'}",
                      f"rest.bind-port={self.rest_port}", "rest.bind-address=127.0.0.1",
                      "rest.address=127.0.0.1", f"io.tmp.dirs={self.tmp}"]
        self.log_path = self.dir / "job.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        a = self.args
        cmd = [sys.executable, "-c", "import sys; from bench import state_fill; "
               "sys.exit(state_fill.fill_main(sys.argv[1:]))",
               "--users-topic", self.plan.users_topic, "--items-topic", self.plan.items_topic,
               "--n-items", str(self.plan.items), "--dedup-ids", str(a.dedup_ids),
               "--events-per-user", str(a.events_per_user),
               "--event-id-chars", str(a.event_id_chars)]
        cmd += [x for s in self.sets for x in ("--set", s)]
        cmd += [x for f in self.flink for x in ("--flink", f)]
        env = {**os.environ, **CHILD_ENV}
        if a.heap:
            env["JVM_ARGS"] = f"-Xmx{a.heap}"
        self.proc = subprocess.Popen(cmd, stdout=self.log_path.open("ab"),
                                     stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env,
                                     start_new_session=True)

    def alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            lines = self.log_path.read_text("utf-8", "replace").splitlines()
            causes = [x for x in lines if "Caused by" in x or "Error" in x]
            raise RuntimeError(f"fill job exited with {self.proc.returncode}:\n"
                               + "\n".join(causes[-8:] + lines[-20:]))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            kill_tree(self.proc.pid, what="fill job", log=say, timeout_s=60)
            self.proc.wait(timeout=60)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        try:
            return rest(self.rest_port, f"/jobs/{job_id}/checkpoints").get("history", [])
        except Exception:
            return []

    def go(self) -> dict[str, Any]:
        plan, a = self.plan, self.args
        res: dict[str, Any] = {"backend": plan.backend, "users": plan.users,
                               "items": plan.items, "tag": self.tag}
        self.start()
        assert self.proc is not None
        t_launch = time.monotonic()
        say(f"{self.tag}: started (pid {self.proc.pid}, log {self.log_path})")
        t_first = None
        last_print, prev = 0.0, (0.0, 0.0, 0.0)
        peak_rss = 0.0
        jpid = None
        while True:
            self.alive()
            now = time.monotonic()
            m = scrape(self.metrics_port)
            u = m.get("flink_taskmanager_job_task_operator_bench_users_filled", 0.0)
            i = m.get("flink_taskmanager_job_task_operator_bench_items_filled", 0.0)
            jpid = jpid or java_pid(self.proc.pid)
            rss = rss_mib(jpid) if jpid else None
            peak_rss = max(peak_rss, rss or 0.0)
            if t_first is None and u + i > 0:
                t_first = now
            if now - last_print >= 10:
                rate = (u - prev[1]) / max(now - prev[0], 1e-9) if prev[0] else 0.0
                say(f"{self.tag}:   users {u:>10,.0f}/{plan.users:,} ({rate:,.0f}/s), items "
                    f"{i:,.0f}/{plan.items:,}, checkpoints "
                    f"{m.get('flink_jobmanager_job_numberOfCompletedCheckpoints', 0):.0f}, "
                    f"JVM RSS {rss or 0:,.0f} MiB")
                last_print, prev = now, (now, u, i)
            if u >= plan.users and i >= plan.items:
                break
            if t_first is None and now - t_launch > 300:
                raise RuntimeError("no record filled 300 s after launch")
            if now - t_launch > a.fill_timeout:
                raise RuntimeError(f"fill not done after {a.fill_timeout:.0f}s ({u:,.0f} users)")
            time.sleep(0.5)
        t_done = time.monotonic()
        done_ms = time.time() * 1000.0
        fill_s = t_done - (t_first or t_launch)
        res.update(loadavg_at_fill=[round(x, 2) for x in os.getloadavg()],
                   fill_s=round(fill_s, 1), launch_to_filled_s=round(t_done - t_launch, 1),
                   users_per_s=round(plan.users / fill_s, 0),
                   rss_at_fill_mib=round(rss or 0, 0))
        say(f"{self.tag}: FILLED {plan.users:,} users + {plan.items:,} items in {fill_s:.0f}s "
            f"({plan.users / fill_s:,.0f} users/s); waiting for the next checkpoint")
        if fill_s > 360:
            say(f"{self.tag}: note: the fill took more than 6 minutes ({fill_s / 60:.1f} min)")
        job_id = rest(self.rest_port, "/jobs/overview")["jobs"][0]["jid"]
        names = {v["id"]: v["name"] for v in rest(self.rest_port, f"/jobs/{job_id}")["vertices"]}
        # The first checkpoint triggered after every record was observed in state.
        def first_after_fill() -> dict[str, Any] | None:
            self.alive()
            after = sorted((c for c in self._checkpoints(job_id)
                            if c.get("trigger_timestamp", 0) > done_ms), key=lambda c: c["id"])
            if after and after[0]["status"] in ("COMPLETED", "FAILED"):
                return after[0]
            return None

        chk = wait_until(first_after_fill, a.checkpoint_timeout, interval_s=0.5)
        if chk is None:
            raise RuntimeError("no checkpoint completed after the fill")
        prom = scrape(self.metrics_port)
        if chk["status"] != "COMPLETED":
            raise RuntimeError(f"checkpoint {chk['id']} after the fill failed: {chk}")
        detail = rest(self.rest_port, f"/jobs/{job_id}/checkpoints/details/{chk['id']}")
        per_op = {names.get(vid, vid): {"state_size": t.get("state_size"),
                                        "checkpointed_size": t.get("checkpointed_size")}
                  for vid, t in detail.get("tasks", {}).items()}
        user_op = next((v for k, v in per_op.items() if "user-fill" in k), {})
        item_op = next((v for k, v in per_op.items() if "item-fill" in k), {})
        jm = "flink_jobmanager_job_"
        res["checkpoint"] = {
            "id": chk["id"], "state_size": chk.get("state_size"),
            "checkpointed_size": chk.get("checkpointed_size"),
            "duration_ms": chk.get("end_to_end_duration"),
            "triggered_after_fill_ms": round(chk["trigger_timestamp"] - done_ms),
            "per_operator": per_op,
            "prometheus_last": {k: prom.get(jm + k) for k in (
                "lastCheckpointSize", "lastCheckpointFullSize", "lastCheckpointDuration",
                "numberOfCompletedCheckpoints", "numberOfFailedCheckpoints")},
        }
        res["bytes_per_user_checkpoint"] = round(user_op.get("state_size", 0) / plan.users, 1)
        res["bytes_per_item_checkpoint"] = round(item_op.get("state_size", 0) / plan.items, 1)
        chk_dir = next((p for p in (self.dir / "checkpoints").glob(f"*/chk-{chk['id']}")), None)
        res["checkpoint_dir_bytes"] = dir_bytes(chk_dir) if chk_dir else None
        if plan.backend.startswith("rocksdb"):
            dbs = {p.name: dir_bytes(p) for p in self.tmp.glob("**/job_*_op_*")}
            res["rocksdb_local_bytes"] = sum(dbs.values())
            res["rocksdb_local_dirs"] = dbs
            res["bytes_per_user_rocksdb_local"] = round(
                sum(v for k, v in dbs.items() if vertex_of(k) in user_vertices(names)
                    ) / plan.users, 1) if dbs else None
        jpid = java_pid(self.proc.pid)
        res["rss_after_checkpoint_mib"] = round(rss_mib(jpid) or 0, 0) if jpid else None
        res["rss_peak_mib"] = round(max(peak_rss, res["rss_after_checkpoint_mib"] or 0), 0)
        if jpid and not a.no_gc:
            res["heap_after_gc_mib"] = round(heap_after_gc_mib(jpid) or 0, 1)
            res["rss_after_gc_mib"] = round(rss_mib(jpid) or 0, 0)
        # The checkpoints around the fill's end (REST keeps the last 10): with incremental
        # checkpoints the one in flight at the end often uploads most of the last delta.
        res["checkpoint_history"] = [
            {"id": h["id"], "status": h["status"],
             "triggered_after_fill_ms": round(h["trigger_timestamp"] - done_ms),
             "state_size": h.get("state_size"), "checkpointed_size": h.get("checkpointed_size"),
             "duration_ms": h.get("end_to_end_duration")}
            for h in sorted(self._checkpoints(job_id), key=lambda h: h["id"])]
        c = res["checkpoint"]
        say(f"{self.tag}: CHECKPOINT {c['id']} (triggered {c['triggered_after_fill_ms']} ms "
            f"after the fill): full {mb(c['state_size'])}, written "
            f"{mb(c['checkpointed_size'])}, {c['duration_ms']} ms; "
            f"{res['bytes_per_user_checkpoint']:,.0f} B/user, "
            f"{res['bytes_per_item_checkpoint']:,.0f} B/item; JVM RSS "
            f"{res['rss_after_checkpoint_mib']} MiB, heap after GC "
            f"{res.get('heap_after_gc_mib')} MiB")
        return res


def vertex_of(dirname: str) -> str:
    # job_<jobid>_op_<OperatorName>_<operatorId>__<subtask>_<parallelism>__uuid_<uuid>
    return dirname.split("__", 1)[0].rsplit("_", 1)[-1]


def user_vertices(names: dict[str, str]) -> set[str]:
    # The head operator's id is the vertex id.
    return {vid for vid, name in names.items() if "user-fill" in name}


def mb(v: Any) -> str:
    return "-" if v is None else f"{v / 1e6:,.1f} MB"
