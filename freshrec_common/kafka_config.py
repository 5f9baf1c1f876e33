"""The one place where Kafka client settings are turned into client configuration.

Every kafka-python admin client, producer and consumer in freshrec is built from
:func:`client_kwargs` (or the :func:`admin_client` / :func:`producer` / :func:`consumer`
shortcuts), and the Flink job's Java Kafka clients from :func:`java_client_properties`, so
bootstrap servers and security (``kafka.security_protocol``, ``kafka.sasl_*``,
``kafka.ssl_cafile``, ``kafka.client_id``) are read the same way everywhere.

No ``api_version`` is ever forced: Kafka 4.x removed the old protocol versions, and
kafka-python negotiates the right ones with the broker.

>>> from freshrec_common.settings import load_settings
>>> s = load_settings(env={}, overrides=["local.port=19092"])
>>> kw = client_kwargs(s)
>>> kw["bootstrap_servers"], kw["security_protocol"], "api_version" in kw
(['127.0.0.1:19092'], 'PLAINTEXT', False)
>>> s = load_settings(env={}, overrides=[
...     "kafka.bootstrap_servers=b1:9093, b2:9093", "kafka.security_protocol=SASL_SSL",
...     "kafka.sasl_mechanism=SCRAM-SHA-512", "kafka.sasl_username=app",
...     "kafka.sasl_password=secret", "kafka.ssl_cafile=/etc/ca.pem"])
>>> kw = client_kwargs(s, client_id="freshrec-tail")
>>> kw["bootstrap_servers"], kw["client_id"], kw["sasl_plain_username"], kw["ssl_cafile"]
(['b1:9093', 'b2:9093'], 'freshrec-tail', 'app', '/etc/ca.pem')
>>> java_client_properties(s)["sasl.jaas.config"].split()[0]
'org.apache.flink.kafka.shaded.org.apache.kafka.common.security.scram.ScramLoginModule'
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.admin import KafkaAdminClient

    from freshrec_common.settings import Settings

# The shaded Flink SQL connector jar relocates the Kafka client classes under this prefix;
# JAAS login modules named in sasl.jaas.config must use the relocated names.
FLINK_SHADED_KAFKA_PREFIX = "org.apache.flink.kafka.shaded."

_LOGIN_MODULES = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
}


class KafkaConfigError(ValueError):
    """The kafka.* settings do not describe a usable client; the message names the key."""


class KafkaAuthError(KafkaConfigError):
    """The broker rejected the SASL login (user, password or mechanism)."""


class KafkaUnreachable(ConnectionError):
    """No broker answered at ``kafka.bootstrap_servers`` within :data:`BOOTSTRAP_TIMEOUT_MS`;
    the message is one line naming the servers and the likely fix."""


# How long a client's constructor waits for a first broker (kafka-python's default, 30 s, is
# long for a newcomer who forgot `freshrec kafka up`): every command ends within ~10 s.
BOOTSTRAP_TIMEOUT_MS = 6000


def unreachable(settings: Settings, servers: list[str]) -> KafkaUnreachable:
    """The error of a bootstrap that found no broker at ``servers``.

    >>> from freshrec_common.settings import load_settings
    >>> print(unreachable(load_settings(env={}), ["127.0.0.1:9092"]))
    ... # doctest: +NORMALIZE_WHITESPACE
    no Kafka broker answers at 127.0.0.1:9092 (kafka.bootstrap_servers): start the local one
    with `freshrec kafka up`, or set kafka.bootstrap_servers (--set or
    FRESHREC_KAFKA_BOOTSTRAP_SERVERS) to a running broker
    """
    at = ",".join(servers)
    fix = ("start the local one with `freshrec kafka up`, or set kafka.bootstrap_servers"
           " (--set or FRESHREC_KAFKA_BOOTSTRAP_SERVERS) to a running broker")
    if settings.kafka.security_protocol != "PLAINTEXT":
        fix += f"; with {settings.kafka.security_protocol}, check kafka.ssl_cafile too"
    return KafkaUnreachable(f"no Kafka broker answers at {at} (kafka.bootstrap_servers): {fix}")


def bootstrap_list(servers: str) -> list[str]:
    """``"a:1, b:2"`` -> ``["a:1", "b:2"]``.

    >>> bootstrap_list(" a:1,b:2 ,")
    ['a:1', 'b:2']
    """
    return [s.strip() for s in servers.split(",") if s.strip()]


def _check(settings: Settings) -> None:
    k = settings.kafka
    if not bootstrap_list(k.bootstrap_servers):
        raise KafkaConfigError("kafka.bootstrap_servers: empty, expected host:port[,host:port]")
    if k.security_protocol.startswith("SASL_"):
        if not k.sasl_mechanism:
            raise KafkaConfigError(
                f"kafka.sasl_mechanism: required with kafka.security_protocol={k.security_protocol}"
            )
        if not k.sasl_username:
            raise KafkaConfigError(
                f"kafka.sasl_username: required with kafka.sasl_mechanism={k.sasl_mechanism}"
            )
    elif k.sasl_mechanism:
        raise KafkaConfigError(
            f"kafka.sasl_mechanism: {k.sasl_mechanism!r} needs kafka.security_protocol"
            f" SASL_PLAINTEXT or SASL_SSL, got {k.security_protocol}"
        )


def client_kwargs(
    settings: Settings, *, bootstrap_servers: str | None = None, client_id: str | None = None
) -> dict[str, Any]:
    """kafka-python keyword arguments (admin, producer or consumer) from ``settings.kafka``.

    ``bootstrap_servers`` overrides the configured servers (the security settings still
    apply); ``client_id`` overrides ``kafka.client_id`` (e.g. ``"freshrec-produce"``).
    Empty settings are left out so kafka-python's defaults apply.
    """
    if bootstrap_servers is not None:
        settings = settings.replace("kafka", bootstrap_servers=bootstrap_servers)
    _check(settings)
    k = settings.kafka
    kw: dict[str, Any] = {
        "bootstrap_servers": bootstrap_list(k.bootstrap_servers),
        "client_id": client_id or k.client_id,
        "security_protocol": k.security_protocol,
    }
    if k.sasl_mechanism:
        kw["sasl_mechanism"] = k.sasl_mechanism
        kw["sasl_plain_username"] = k.sasl_username
        kw["sasl_plain_password"] = k.sasl_password
    if k.ssl_cafile:
        kw["ssl_cafile"] = k.ssl_cafile
    return kw


def local_broker_kwargs(settings: Settings, *, client_id: str | None = None) -> dict[str, Any]:
    """kafka-python keyword arguments for the local broker of ``freshrec kafka up``.

    That broker listens in PLAINTEXT on ``local.host:local.port`` whatever ``kafka.*`` says
    (which may point at a remote cluster).
    """
    s = settings.replace(
        "kafka",
        bootstrap_servers=f"{settings.local.host}:{settings.local.port}",
        security_protocol="PLAINTEXT",
        sasl_mechanism="",
        sasl_username="",
        sasl_password="",
        ssl_cafile="",
    )
    return client_kwargs(s, client_id=client_id)


def java_client_properties(settings: Settings, *, shaded: bool = True) -> dict[str, str]:
    """The same settings as Java Kafka client properties (Flink KafkaSource / KafkaSink).

    ``shaded`` names the JAAS login module as relocated inside
    ``flink-sql-connector-kafka`` (the jar freshrec loads); pass False for plain
    ``kafka-clients``. A CA file is given as a PEM trust store.
    """
    _check(settings)
    k = settings.kafka
    props = {
        "bootstrap.servers": ",".join(bootstrap_list(k.bootstrap_servers)),
        "client.id": k.client_id,
        "security.protocol": k.security_protocol,
    }
    if k.sasl_mechanism:
        module = (FLINK_SHADED_KAFKA_PREFIX if shaded else "") + _LOGIN_MODULES[k.sasl_mechanism]
        user = k.sasl_username.replace("\\", "\\\\").replace('"', '\\"')
        password = k.sasl_password.replace("\\", "\\\\").replace('"', '\\"')
        props["sasl.mechanism"] = k.sasl_mechanism
        props["sasl.jaas.config"] = f'{module} required username="{user}" password="{password}";'
    if k.ssl_cafile:
        props["ssl.truststore.type"] = "PEM"
        props["ssl.truststore.location"] = k.ssl_cafile
    return props


class _SaslRejectionWatch(logging.Handler):
    """Fails a client's bootstrap at once when the broker refuses its SASL login.

    kafka-python 3.0 retries a bootstrap connection whose login was rejected until
    ``bootstrap_timeout_ms`` (30 s), then raises only "Unable to bootstrap"; each failed
    attempt is merely logged (a ``kafka.net.manager`` warning with the exception as an
    argument). Worse, the broker sends its rejection and closes the connection right
    after (``connection.failed.authentication.delay.ms``), and kafka-python drops bytes
    read together with the close, so the rejection usually arrives as a bare "socket
    disconnected". Raising from this handler, on the thread running the bootstrap, ends it:
    on a rejection, or on :data:`DROPS_BEFORE_FAILING` such drops in a row (the TLS
    handshake succeeded, so the broker is up and is refusing this client).

    >>> from kafka.errors import KafkaConnectionError, SaslAuthenticationFailedError
    >>> def attempt(watch, exc):
    ...     watch.emit(logging.LogRecord("kafka.net.manager", logging.WARNING, "", 0,
    ...                "Bootstrap connection to %s failed: %s", ("b-0", exc), None))
    >>> kw = {"sasl_plain_username": "ann", "sasl_mechanism": "PLAIN",
    ...       "bootstrap_servers": ["b:9093"], "client_id": "c"}
    >>> attempt(_SaslRejectionWatch(kw), SaslAuthenticationFailedError(
    ...     "SaslAuthenticationFailedError: Authentication failed: Invalid username or password"))
    ... # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    ...
    freshrec_common.kafka_config.KafkaAuthError: the broker at b:9093 rejected the SASL PLAIN login
    of 'ann': Authentication failed: Invalid username or password; check ...
    >>> watch = _SaslRejectionWatch(kw)
    >>> for _ in range(watch.DROPS_BEFORE_FAILING):  # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
    ...     attempt(watch, KafkaConnectionError("socket disconnected"))
    Traceback (most recent call last):
    ...
    freshrec_common.kafka_config.KafkaAuthError: the broker at b:9093 closed the connection during
    the SASL PLAIN login of 'ann' 3 times in a row: it rejects the login ...
    """

    DROPS_BEFORE_FAILING = 3

    def __init__(self, kw: dict[str, Any]) -> None:
        super().__init__(logging.WARNING)
        self.kw = kw
        self.drops = 0
        # The bootstrap runs on the client's IO thread, or on the caller's when it has none.
        self.threads = (f"kafka-io-{kw['client_id']}", threading.current_thread().name)

    def emit(self, record: logging.LogRecord) -> None:
        from kafka.errors import KafkaConnectionError, SaslAuthenticationFailedError

        if record.threadName not in self.threads or not isinstance(record.args, tuple):
            return
        kw = self.kw
        login = f"the SASL {kw['sasl_mechanism']} login of {kw['sasl_plain_username']!r}"
        at = f"the broker at {','.join(kw['bootstrap_servers'])}"
        check = (
            "check kafka.sasl_username, kafka.sasl_mechanism and kafka.sasl_password"
            " (FRESHREC_KAFKA_SASL_PASSWORD)"
        )
        for arg in record.args:
            if isinstance(arg, SaslAuthenticationFailedError):
                reason = str(arg.args[0]) if arg.args else str(arg)
                reason = reason.removeprefix("SaslAuthenticationFailedError: ")
                raise KafkaAuthError(f"{at} rejected {login}: {reason}; {check}") from arg
            if isinstance(arg, KafkaConnectionError) and str(arg).endswith("socket disconnected"):
                self.drops += 1
                if self.drops >= self.DROPS_BEFORE_FAILING:
                    raise KafkaAuthError(
                        f"{at} closed the connection during {login} {self.drops} times in a"
                        " row: it rejects the login (a wrong user or password), or the"
                        f" listener does not offer this mechanism; {check}"
                    ) from arg
                return
            if isinstance(arg, BaseException):
                self.drops = 0


@contextlib.contextmanager
def _bootstrapping(settings: Settings, kw: dict[str, Any]) -> Iterator[None]:
    """While a client is built (its constructor bootstraps): a rejected SASL login fails at
    once (:class:`_SaslRejectionWatch`), and no broker at all is :class:`KafkaUnreachable`."""
    from kafka.errors import KafkaTimeoutError

    watch = _SaslRejectionWatch(kw) if kw.get("sasl_mechanism") else None
    logger = logging.getLogger("kafka.net.manager")
    if watch is not None:
        logger.addHandler(watch)
    try:
        yield
    except KafkaTimeoutError as exc:  # kafka-python's "Unable to bootstrap from [...]"
        raise unreachable(settings, kw["bootstrap_servers"]) from exc
    finally:
        if watch is not None:
            logger.removeHandler(watch)


def _client_kw(settings: Settings, extra: dict[str, Any]) -> dict[str, Any]:
    return {**client_kwargs(settings), "bootstrap_timeout_ms": BOOTSTRAP_TIMEOUT_MS, **extra}


def admin_client(settings: Settings, **extra: Any) -> KafkaAdminClient:
    """A connected ``KafkaAdminClient``; ``extra`` adds or overrides kafka-python options.

    Like :func:`producer` and :func:`consumer`, raises :class:`KafkaAuthError` at once if
    the broker rejects the SASL login, and :class:`KafkaUnreachable` when no broker answers
    within :data:`BOOTSTRAP_TIMEOUT_MS` (unless ``extra`` sets ``bootstrap_timeout_ms``).
    """
    from kafka.admin import KafkaAdminClient

    kw = _client_kw(settings, extra)
    with _bootstrapping(settings, kw):
        return KafkaAdminClient(**kw)


def producer(settings: Settings, **extra: Any) -> KafkaProducer:
    """A ``KafkaProducer``; ``extra`` adds or overrides options (e.g. ``acks="all"``)."""
    from kafka import KafkaProducer

    kw = _client_kw(settings, extra)
    with _bootstrapping(settings, kw):
        return KafkaProducer(**kw)


def consumer(settings: Settings, *topics: str, **extra: Any) -> KafkaConsumer:
    """A ``KafkaConsumer`` subscribed to ``topics`` (none: assign partitions yourself)."""
    from kafka import KafkaConsumer

    kw = _client_kw(settings, extra)
    with _bootstrapping(settings, kw):
        return KafkaConsumer(*topics, **kw)


def check_reachable(settings: Settings, timeout_ms: int = BOOTSTRAP_TIMEOUT_MS) -> None:
    """Raise :class:`KafkaUnreachable` (or :class:`KafkaConfigError`) unless a broker of
    ``kafka.bootstrap_servers`` answers, for commands that hand the servers to others."""
    admin_client(settings, bootstrap_timeout_ms=timeout_ms,
                 request_timeout_ms=max(timeout_ms, 5000)).close()
