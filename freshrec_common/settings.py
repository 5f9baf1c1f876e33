"""One frozen settings object for every part of freshrec.

Precedence, lowest first: the defaults in ``freshrec_common/default_settings.toml``, a TOML file
given with ``--config`` (or ``FRESHREC_CONFIG``), ``FRESHREC_<SECTION>_<KEY>`` environment
variables, then ``--set section.key=value`` CLI flags. Every value is validated at start;
an error names the key and where the bad value came from.

>>> s = load_settings(env={"FRESHREC_JOB_PARALLELISM": "2"}, overrides=["local.port=19092"])
>>> s.job.parallelism, s.local.port, s.kafka.bootstrap_servers
(2, 19092, '127.0.0.1:19092')
>>> load_settings(env={"FRESHREC_JOB_PARALLELISM": "zero"})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
freshrec_common.settings.SettingsError: job.parallelism: expected an integer, got 'zero' (from ...
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, get_type_hints

from online_models.config import ModelConfig, ModelConfigError


class SettingsError(ValueError):
    """A setting is unknown or has a bad value; the message names the key."""


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str
    security_protocol: str
    sasl_mechanism: str
    sasl_username: str
    sasl_password: str
    ssl_cafile: str
    client_id: str


@dataclass(frozen=True)
class LocalSettings:
    port: int
    controller_port: int
    host: str
    state_dir: str
    cache_dir: str
    kafka_version: str
    broker_heap: str
    start_timeout_s: float


@dataclass(frozen=True)
class TopicSettings:
    events: str
    dlq: str
    recommendations: str
    item_embeddings: str
    partitions: int
    dlq_max_message_bytes: int


@dataclass(frozen=True)
class JobSettings:
    parallelism: int
    checkpoint_interval_ms: int
    restart_attempts: int
    restart_delay_ms: int
    delivery: str
    state_backend: str
    checkpoint_dir: str
    restore_from: str
    refresh_interval_ms: int
    user_shards: int
    item_shards: int
    bundle_max_records: int
    bundle_max_age_ms: int
    item_bundle_max_age_ms: int
    network_buffer_timeout_ms: int
    item_publish_interval_ms: int
    item_background_publish_interval_ms: int
    dedup_window_s: int
    dedup_max_ids: int
    user_state_ttl_days: int
    state_cache_entries: int
    max_payload_bytes: int
    max_id_length: int
    group_id: str
    starting_offsets: str
    transaction_timeout_ms: int
    metrics_port: int
    learn_items: bool
    stop_timeout_s: float
    savepoint_on_stop: bool
    savepoint_dir: str


@dataclass(frozen=True)
class PrivacySettings:
    pseudonymize_users: bool
    key_file: str


@dataclass(frozen=True)
class ClusterSettings:
    state_dir: str
    host: str
    rest_port: int
    rpc_port: int
    taskmanagers: int
    slots_per_taskmanager: int
    jobmanager_memory: str
    taskmanager_memory: str
    managed_memory_fraction: float
    metrics_ports: str
    parallelism: int
    savepoint_dir: str
    start_timeout_s: float


@dataclass(frozen=True)
class ServeSettings:
    host: str
    port: int
    store_dir: str
    store_max_gb: float
    auth_token: str = field(repr=False)


@dataclass(frozen=True)
class ExperimentsSettings:
    file: str


@dataclass(frozen=True)
class Settings:
    kafka: KafkaSettings
    local: LocalSettings
    topics: TopicSettings
    job: JobSettings
    model: ModelConfig
    privacy: PrivacySettings
    cluster: ClusterSettings
    serve: ServeSettings
    experiments: ExperimentsSettings
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def replace(self, section: str, **values: Any) -> Settings:
        """A copy with some keys of one section changed (tests, per-run overrides)."""
        new = dataclasses.replace(getattr(self, section), **values)
        return dataclasses.replace(self, **{section: new})


_SECTIONS: dict[str, type] = {
    "kafka": KafkaSettings,
    "local": LocalSettings,
    "topics": TopicSettings,
    "job": JobSettings,
    "model": ModelConfig,
    "privacy": PrivacySettings,
    "cluster": ClusterSettings,
    "serve": ServeSettings,
    "experiments": ExperimentsSettings,
}

_CHOICES: dict[str, tuple[str, ...]] = {
    "kafka.security_protocol": ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
    "kafka.sasl_mechanism": ("", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
    "job.delivery": ("at-least-once", "exactly-once"),
    "job.state_backend": ("hashmap", "rocksdb"),
    "job.starting_offsets": ("earliest", "latest", "committed"),
}
_POSITIVE = {
    "local.port", "local.controller_port", "topics.partitions",
    "topics.dlq_max_message_bytes", "job.parallelism",
    "job.checkpoint_interval_ms", "job.refresh_interval_ms", "job.user_shards",
    "job.item_shards", "job.bundle_max_records", "job.bundle_max_age_ms",
    "job.item_bundle_max_age_ms",
    "job.item_publish_interval_ms",
    "job.item_background_publish_interval_ms", "job.dedup_window_s", "job.dedup_max_ids",
    "job.user_state_ttl_days", "job.max_payload_bytes", "job.max_id_length",
    "job.transaction_timeout_ms", "local.start_timeout_s",
    "job.stop_timeout_s", "cluster.rest_port", "cluster.rpc_port", "cluster.taskmanagers",
    "cluster.slots_per_taskmanager", "cluster.parallelism", "cluster.start_timeout_s",
    "serve.store_max_gb",
}
_NON_NEGATIVE = {"job.restart_attempts", "job.restart_delay_ms", "job.network_buffer_timeout_ms",
                 "job.state_cache_entries"}
# Secrets that must come from the environment: a file or a --set flag would leave them in
# the repository, a shell history or the process list.
_ENV_ONLY = {"serve.auth_token"}
# The job's max parallelism (flink_jobs.shard_keys.MAX_PARALLELISM): a shard is a key.
_MAX_SHARDS = 128
# A user's recent event ids keep their age in 16 bits (flink_jobs.dedup).
MAX_DEDUP_WINDOW_S = 0xFFFF
# The broker's default transaction.max.timeout.ms is 15 minutes.
_MAX_TRANSACTION_TIMEOUT_MS = 900_000


def _default_document() -> dict[str, Any]:
    text = resources.files("freshrec_common").joinpath("default_settings.toml").read_text("utf-8")
    return tomllib.loads(text)


def _coerce(key: str, raw: Any, kind: type, source: str) -> Any:
    where = f" (from {source})"
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "1", "yes", "false", "0", "no"):
            return raw.lower() in ("true", "1", "yes")
        raise SettingsError(f"{key}: expected true or false, got {raw!r}{where}")
    if kind is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        try:
            return int(str(raw))
        except ValueError:
            raise SettingsError(f"{key}: expected an integer, got {raw!r}{where}") from None
    if kind is float:
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise SettingsError(f"{key}: expected a number, got {raw!r}{where}") from None
    if not isinstance(raw, str | int | float) or isinstance(raw, bool):
        raise SettingsError(f"{key}: expected a string, got {raw!r}{where}")
    return str(raw)


def _env_name(section: str, key: str) -> str:
    return f"FRESHREC_{section.upper()}_{key.upper()}"


def load_settings(
    config: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Sequence[str] = (),
) -> Settings:
    """Build and validate the settings; see the module docstring for precedence."""
    env = os.environ if env is None else env
    document = _default_document()
    # The model section's defaults are ModelConfig's own; the TOML only documents them.
    document["model"] = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    raw: dict[str, dict[str, tuple[Any, str]]] = {
        sec: {k: (v, "defaults") for k, v in values.items()}
        for sec, values in document.items()
    }
    config = config or env.get("FRESHREC_CONFIG")
    if config:
        path = Path(config)
        try:
            doc = tomllib.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            raise SettingsError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None
        for sec, values in doc.items():
            if sec not in _SECTIONS or not isinstance(values, dict):
                raise SettingsError(f"{sec}: unknown section in {path}")
            for k, v in values.items():
                if k not in raw[sec]:
                    raise SettingsError(f"{sec}.{k}: unknown setting in {path}")
                raw[sec][k] = (v, str(path))
    for sec, values in raw.items():
        for k in values:
            name = _env_name(sec, k)
            if name in env:
                values[k] = (env[name], name)
    for item in overrides:
        dotted, sep, value = item.partition("=")
        sec, _, k = dotted.strip().partition(".")
        if not sep or sec not in raw or k not in raw[sec]:
            raise SettingsError(f"--set {item!r}: expected section.key=value with a known key")
        raw[sec][k] = (value, f"--set {dotted.strip()}")
    # The local broker's port decides the default bootstrap address.
    if raw["kafka"]["bootstrap_servers"][1] == "defaults":
        port = raw["local"]["port"][0]
        raw["kafka"]["bootstrap_servers"] = (f"127.0.0.1:{port}", raw["local"]["port"][1])

    sources: dict[str, str] = {}
    sections: dict[str, Any] = {}
    for sec, cls in _SECTIONS.items():
        hints = get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = f"{sec}.{f.name}"
            if f.name not in raw[sec]:
                raise SettingsError(f"{key}: missing from default_settings.toml")
            value, source = raw[sec][f.name]
            if key in _ENV_ONLY and source != "defaults" and source != _env_name(sec, f.name):
                raise SettingsError(f"{key}: set it with the environment variable "
                                    f"{_env_name(sec, f.name)}, never in {source}")
            value = _coerce(key, value, hints[f.name], source)
            _validate(key, value, source)
            kwargs[f.name] = value
            sources[key] = source
        try:
            sections[sec] = cls(**kwargs)
        except ModelConfigError as exc:  # ModelConfig checks its own fields
            key = f"{sec}.{exc.field}"
            raise SettingsError(f"{key}: {exc.problem} (from {sources[key]})") from None
    settings = Settings(**sections, sources=sources)
    if settings.job.transaction_timeout_ms > _MAX_TRANSACTION_TIMEOUT_MS:
        raise SettingsError(
            "job.transaction_timeout_ms: must stay below the broker's transaction.max.timeout.ms"
            f" ({_MAX_TRANSACTION_TIMEOUT_MS} ms), got {settings.job.transaction_timeout_ms}"
        )
    return settings


def _validate(key: str, value: Any, source: str) -> None:
    where = f" (from {source})"
    if key in _CHOICES and value not in _CHOICES[key]:
        choices = ", ".join(repr(c) for c in _CHOICES[key])
        raise SettingsError(f"{key}: must be one of {choices}, got {value!r}{where}")
    if key in _POSITIVE and value <= 0:
        raise SettingsError(f"{key}: must be > 0, got {value!r}{where}")
    if key in _NON_NEGATIVE and value < 0:
        raise SettingsError(f"{key}: must be >= 0, got {value!r}{where}")
    if key == "cluster.managed_memory_fraction" and not 0.0 <= value <= 1.0:
        raise SettingsError(f"{key}: must be in [0, 1], got {value!r}{where}")
    if key in ("cluster.jobmanager_memory", "cluster.taskmanager_memory") and not re.fullmatch(
            r"\d+[kmg]", value):
        raise SettingsError(f"{key}: expected a size like 1536m or 2g, got {value!r}{where}")
    if key == "cluster.metrics_ports" and not re.fullmatch(r"\d+(-\d+)?", value):
        raise SettingsError(
            f"{key}: expected a port or a range like 9250-9260, got {value!r}{where}")
    if key in ("job.user_shards", "job.item_shards") and value > _MAX_SHARDS:
        raise SettingsError(f"{key}: at most {_MAX_SHARDS} (the job's max parallelism), got "
                            f"{value}{where}")
    if key == "job.dedup_window_s" and value > MAX_DEDUP_WINDOW_S:
        raise SettingsError(f"{key}: at most {MAX_DEDUP_WINDOW_S} s (~18 h: each user keeps "
                            f"the age of its recent event ids in 16 bits), got {value}{where}")
    if key == "serve.port" and not 0 < value <= 65535:
        raise SettingsError(f"{key}: must be a TCP port 1..65535, got {value}{where}")
