"""Structure checks of the deployment files, which are not run here (no Kubernetes, no
Docker engine): deploy/k8s (FlinkDeployment, Dockerfile, Strimzi topics), deploy/compose,
and the config `freshrec cluster up` generates. Names, versions and topic configs must agree
with pyproject.toml, freshrec_common/default_settings.toml and freshrec_common/jars.py."""

from __future__ import annotations

import configparser
import re
import shutil
import signal
import subprocess
import tomllib
from importlib.util import find_spec
from pathlib import Path

import pytest
import yaml

from devstack import flink_config
from devstack.flink_config import PROMETHEUS_FACTORY, cluster_configuration, render_config_yaml
from devstack.kafka_topics import COMPACTED_TOPIC_CONFIGS, default_topics
from freshrec.signals import EXIT_REFUSED, exit_code
from freshrec_common.jars import FLINK_CONNECTOR_VERSION
from freshrec_common.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
COMPOSE = ROOT / "deploy" / "compose"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
SETTINGS = load_settings(env={})


def flink_version() -> str:
    """2.2.1, from the pinned apache-flink dependency."""
    pins = [d for d in PYPROJECT["project"]["dependencies"] if d.startswith("apache-flink==")]
    assert len(pins) == 1, "apache-flink must be pinned with == in pyproject.toml"
    return pins[0].split("==")[1]


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text("utf-8")) if doc is not None]


@pytest.fixture(scope="module")
def deployment() -> dict:
    docs = load_all(K8S / "flinkdeployment.yaml")
    assert len(docs) == 1
    return docs[0]


def set_args(args: list[str]) -> list[str]:
    """The ``--set k=v`` values in a job argument list."""
    return [args[i + 1] for i, a in enumerate(args) if a == "--set"]


def test_flinkdeployment_structure(deployment: dict) -> None:
    assert deployment["apiVersion"] == "flink.apache.org/v1beta1"
    assert deployment["kind"] == "FlinkDeployment"
    assert deployment["metadata"]["name"]
    spec = deployment["spec"]
    for key in ("image", "flinkVersion", "flinkConfiguration", "jobManager", "taskManager", "job"):
        assert key in spec, f"spec.{key} is missing"
    major, minor, _ = flink_version().split(".")
    assert spec["flinkVersion"] == f"v{major}_{minor}"
    for role in ("jobManager", "taskManager"):
        res = spec[role]["resource"]
        assert re.fullmatch(r"\d+m", str(res["memory"])) and float(res["cpu"]) > 0, role


def test_flinkdeployment_runs_the_python_job(deployment: dict) -> None:
    job = deployment["spec"]["job"]
    assert job["entryClass"] == "org.apache.flink.client.python.PythonDriver"
    assert job["jarURI"] == f"local:///opt/flink/lib/flink-python-{flink_version()}.jar"
    args = job["args"]
    module = args[args.index("-pym") + 1]
    assert module == "flink_jobs.recommender_job" and find_spec(module) is not None
    assert args[args.index("-pyclientexec") + 1] == \
        deployment["spec"]["flinkConfiguration"]["python.client.executable"]
    assert job["upgradeMode"] == "savepoint"
    assert job["state"] == "running"
    # Every --set is a valid setting, and the job's parallelism agrees with the spec.
    job_settings = load_settings(env={}, overrides=set_args(args))
    assert job_settings.job.parallelism == job["parallelism"]
    conf = deployment["spec"]["flinkConfiguration"]
    assert job_settings.job.checkpoint_dir == conf["execution.checkpointing.dir"]
    assert job_settings.job.metrics_port == 0, "the cluster's reporter is configured, not the job's"
    assert job["parallelism"] <= int(conf["pipeline.max-parallelism"])


def test_flinkdeployment_configuration(deployment: dict) -> None:
    conf = deployment["spec"]["flinkConfiguration"]
    assert conf["python.execution-mode"] == "thread"
    assert conf["python.executable"] == "/opt/venv/bin/python"
    assert conf["execution.checkpointing.dir"].startswith("s3://")
    assert conf["execution.checkpointing.savepoint-dir"].startswith("s3://")
    assert conf["high-availability.type"] == "kubernetes"
    assert conf["metrics.reporter.prom.factory.class"] == PROMETHEUS_FACTORY
    port = int(conf["metrics.reporter.prom.port"])
    container = deployment["spec"]["podTemplate"]["spec"]["containers"][0]
    assert container["name"] == "flink-main-container"
    assert port in [p["containerPort"] for p in container["ports"]]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["ENABLE_BUILT_IN_PLUGINS"] == f"flink-s3-fs-presto-{flink_version()}.jar"
    assert "FRESHREC_KAFKA_BOOTSTRAP_SERVERS" in env


def test_dockerfile_versions_and_no_committed_jars() -> None:
    text = (K8S / "Dockerfile").read_text("utf-8")
    assert f"ARG FLINK_IMAGE=flink:{flink_version()}-java17" in text
    assert "FROM ${FLINK_IMAGE}" in text
    python = re.search(r"ARG PYTHON_VERSION=(\d+\.\d+)", text)
    assert python is not None
    required = PYPROJECT["project"]["requires-python"].removeprefix(">=")
    assert tuple(map(int, python.group(1).split("."))) >= tuple(map(int, required.split(".")))
    # The connector comes from Maven at build time (`freshrec setup`), never from the tree.
    assert "freshrec --set local.cache_dir=/opt/freshrec/cache setup" in text
    assert "FRESHREC_LOCAL_CACHE_DIR=/opt/freshrec/cache" in text
    assert "flink-python-*.jar /opt/flink/lib/" in text
    pom = (ROOT / "deploy" / "local" / "pom.xml").read_text("utf-8")
    assert "flink-sql-connector-kafka" in pom
    assert FLINK_CONNECTOR_VERSION.endswith("-" + ".".join(flink_version().split(".")[:2]))
    tracked = subprocess.run(["git", "ls-files", "*.jar"], cwd=ROOT, capture_output=True,
                             text=True, check=False).stdout.split()
    assert tracked == [], f"jars must not be committed: {tracked}"


def test_strimzi_topics_match_settings() -> None:
    docs = load_all(K8S / "kafka-topics.yaml")
    assert all(d["apiVersion"] == "kafka.strimzi.io/v1beta2" and d["kind"] == "KafkaTopic"
               for d in docs)
    assert len({d["metadata"]["labels"]["strimzi.io/cluster"] for d in docs}) == 1
    by_name = {d["spec"]["topicName"]: d["spec"] for d in docs}
    expected = default_topics(SETTINGS)
    assert set(by_name) == set(expected)
    for name, configs in expected.items():
        got = by_name[name]
        policy = configs.get("cleanup.policy", "delete")
        assert got["config"].get("cleanup.policy", "delete") == policy, name
        # Every config freshrec sets locally, with the same value (YAML reads them as numbers).
        assert {k: str(got["config"].get(k)) for k in configs} == configs, name
        assert got["partitions"] >= 1 and got["replicas"] >= 1
        assert re.fullmatch(r"[a-z0-9.-]+", docs[list(by_name).index(name)]["metadata"]["name"])
    # Partitions bound the useful source parallelism of the FlinkDeployment.
    parallelism = load_all(K8S / "flinkdeployment.yaml")[0]["spec"]["job"]["parallelism"]
    assert by_name[SETTINGS.topics.events]["partitions"] >= parallelism


def test_compose_file() -> None:
    path = COMPOSE / "docker-compose.yml"
    text = path.read_text("utf-8")
    assert "NOT EXERCISED BY THE TEST SUITE" in text
    doc = yaml.safe_load(text)
    services = doc["services"]
    assert {"kafka", "jobmanager", "taskmanager", "prometheus", "grafana"} <= set(services)
    assert services["kafka"]["image"] == f"apache/kafka:{SETTINGS.local.kafka_version}"
    script = services["topics"]["command"][0]
    lines = [ln.strip() for ln in script.splitlines()]
    [compacted] = [ln.split("=", 1)[1] for ln in lines if ln.startswith("compacted=")]
    assert dict(kv.split("=", 1) for kv in compacted.split(",")) == COMPACTED_TOPIC_CONFIGS
    for name, configs in default_topics(SETTINGS).items():
        [create] = [ln for ln in lines if f"--create --if-not-exists --topic {name} " in ln]
        create_configs = dict(kv.split("=", 1) for kv in re.findall(r"--config (\S+)", create))
        alters = [ln for ln in lines if f"--alter --entity-type topics --entity-name {name} " in ln]
        if configs.get("cleanup.policy") == "compact":
            assert create_configs == {"cleanup.policy": "compact"}, name
            # Set on every run, so a topic created earlier gets them too.
            assert [a.split("--add-config ")[1] for a in alters] == ["$$compacted"], name
            assert lines.index(alters[0]) > lines.index(create), name
        else:
            assert (create_configs, alters) == (configs, []), name
    flink_props = yaml.safe_load(services["jobmanager"]["environment"]["FLINK_PROPERTIES"])
    assert flink_props["python.execution-mode"] == "thread"
    prom = yaml.safe_load((COMPOSE / "prometheus.yml").read_text("utf-8"))
    targets = prom["scrape_configs"][0]["static_configs"][0]["targets"]
    assert f"taskmanager:{flink_props['metrics.reporter.prom.port']}" in targets


def test_docs_say_the_deployments_are_not_run_here() -> None:
    readme = (ROOT / "README.md").read_text("utf-8")
    ops = (ROOT / "docs" / "operations.md").read_text("utf-8")
    assert "docs/operations.md" in readme
    for text in (readme, ops):
        assert "not run here" in text or "not exercised" in text


def test_generated_cluster_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The config.yaml of `freshrec cluster up` parses to the intended Flink options."""
    monkeypatch.setattr(flink_config, "java_home", lambda: "/usr/lib/jvm/java-17")
    settings = load_settings(env={}, overrides=[f"cluster.state_dir={tmp_path}"])
    conf = cluster_configuration(settings)
    parsed = yaml.safe_load(render_config_yaml(conf))
    # YAML reads true/false as booleans; Flink accepts either spelling.
    assert {k: str(v).lower() if isinstance(v, bool) else str(v)
            for k, v in parsed.items()} == conf
    assert parsed["taskmanager.numberOfTaskSlots"] == settings.cluster.slots_per_taskmanager
    assert parsed["python.execution-mode"] == "thread"
    assert parsed["metrics.reporter.prom.port"] == "9250-9260"
    assert parsed["env.java.home"] == "/usr/lib/jvm/java-17"  # unquoted: read by shell scripts
    assert "\nenv.java.home: /usr/lib/jvm/java-17\n" in render_config_yaml(conf)
    assert settings.cluster.parallelism <= (
        settings.cluster.taskmanagers * settings.cluster.slots_per_taskmanager)


def test_serve_deployment_and_service() -> None:
    deployment, service = load_all(K8S / "serve.yaml")
    assert (deployment["kind"], service["kind"]) == ("Deployment", "Service")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    [container] = pod["spec"]["containers"]
    assert container["command"][-1] == "serve"
    env = {e["name"]: e for e in container["env"]}
    known = {f"FRESHREC_{sec.upper()}_{key.upper()}" for sec in ("kafka", "serve")
             for key in vars(getattr(SETTINGS, sec))}
    assert set(env) <= known, set(env) - known
    # Binding beyond loopback needs the token, and the token comes from a Secret.
    assert env["FRESHREC_SERVE_HOST"]["value"] == "0.0.0.0"
    assert "secretKeyRef" in env["FRESHREC_SERVE_AUTH_TOKEN"]["valueFrom"]
    port = int(env["FRESHREC_SERVE_PORT"]["value"])
    assert container["ports"][0]["containerPort"] == port
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert env["FRESHREC_SERVE_STORE_DIR"]["value"] in mounts
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]


def test_systemd_unit_signals_and_exit_codes_agree_with_freshrec(tmp_path: Path) -> None:
    """deploy/systemd/freshrec.service: SIGTERM to `freshrec run` alone, a stop timeout above
    job.stop_timeout_s, the clean-stop exit a success, a refused start not retried."""
    path = ROOT / "deploy" / "systemd" / "freshrec.service"
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # keys are case-sensitive
    unit.read_string(path.read_text("utf-8"))
    service = unit["Service"]
    assert service["ExecStart"].endswith("/.venv/bin/freshrec run")
    assert service["KillMode"] == "mixed" and service["KillSignal"] == "SIGTERM"
    assert float(service["TimeoutStopSec"]) > SETTINGS.job.stop_timeout_s
    assert str(exit_code(signal.SIGTERM)) in service["SuccessExitStatus"].split()
    assert {"2", str(EXIT_REFUSED)} <= set(service["RestartPreventExitStatus"].split())
    if shutil.which("systemd-analyze") is None:
        return
    # systemd's own check, with the paths of this checkout.
    local = tmp_path / "freshrec.service"
    local.write_text(path.read_text("utf-8").replace("/opt/freshrec", str(ROOT)), "utf-8")
    done = subprocess.run(["systemd-analyze", "verify", str(local)], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
