"""freshrec_common.kafka_config: one place turning settings.kafka into client configuration."""

from __future__ import annotations

import pytest

from freshrec_common import kafka_config as kc
from freshrec_common.settings import load_settings


def _settings(*overrides: str):
    return load_settings(env={}, overrides=list(overrides))


def test_defaults_point_at_the_local_broker_in_plaintext():
    kw = kc.client_kwargs(_settings("local.port=19092"))
    assert kw == {
        "bootstrap_servers": ["127.0.0.1:19092"],
        "client_id": "freshrec",
        "security_protocol": "PLAINTEXT",
    }
    assert "api_version" not in kw  # never forced: Kafka 4.x dropped old protocol versions


def test_sasl_ssl_settings_map_to_kafka_python_names():
    s = _settings(
        "kafka.bootstrap_servers=a:9096,b:9096",
        "kafka.security_protocol=SASL_SSL",
        "kafka.sasl_mechanism=PLAIN",
        "kafka.sasl_username=svc",
        "kafka.sasl_password=p4ss",
        "kafka.ssl_cafile=/ca.pem",
        "kafka.client_id=shop",
    )
    assert kc.client_kwargs(s) == {
        "bootstrap_servers": ["a:9096", "b:9096"],
        "client_id": "shop",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "svc",
        "sasl_plain_password": "p4ss",
        "ssl_cafile": "/ca.pem",
    }


def test_kwargs_are_accepted_by_every_kafka_python_client():
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.admin import KafkaAdminClient

    s = _settings(
        "kafka.security_protocol=SASL_SSL", "kafka.sasl_mechanism=SCRAM-SHA-256",
        "kafka.sasl_username=u", "kafka.ssl_cafile=/ca.pem",
    )  # fmt: skip
    for cls in (KafkaAdminClient, KafkaProducer, KafkaConsumer):
        assert set(kc.client_kwargs(s)) <= set(cls.DEFAULT_CONFIG), cls.__name__


def test_local_broker_kwargs_ignore_remote_cluster_security():
    s = _settings(
        "local.port=19092", "kafka.bootstrap_servers=remote:9096",
        "kafka.security_protocol=SASL_SSL", "kafka.sasl_mechanism=PLAIN",
        "kafka.sasl_username=u", "kafka.sasl_password=p",
    )  # fmt: skip
    assert kc.local_broker_kwargs(s, client_id="x") == {
        "bootstrap_servers": ["127.0.0.1:19092"],
        "client_id": "x",
        "security_protocol": "PLAINTEXT",
    }


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["kafka.bootstrap_servers= , "], "kafka.bootstrap_servers"),
        (["kafka.security_protocol=SASL_PLAINTEXT"], "kafka.sasl_mechanism"),
        (
            ["kafka.security_protocol=SASL_PLAINTEXT", "kafka.sasl_mechanism=PLAIN"],
            "kafka.sasl_username",
        ),
        (["kafka.sasl_mechanism=PLAIN"], "kafka.sasl_mechanism"),
    ],
)
def test_inconsistent_settings_name_the_key(overrides, key):
    with pytest.raises(kc.KafkaConfigError) as exc:
        kc.client_kwargs(_settings(*overrides))
    assert str(exc.value).startswith(key)


def test_java_properties_for_flink_use_shaded_login_module():
    s = _settings(
        "kafka.bootstrap_servers=a:1, b:2", "kafka.security_protocol=SASL_SSL",
        "kafka.sasl_mechanism=PLAIN", "kafka.sasl_username=u", 'kafka.sasl_password=p"w',
        "kafka.ssl_cafile=/ca.pem",
    )  # fmt: skip
    props = kc.java_client_properties(s)
    assert props["bootstrap.servers"] == "a:1,b:2"
    assert props["security.protocol"] == "SASL_SSL"
    assert props["sasl.mechanism"] == "PLAIN"
    assert props["sasl.jaas.config"] == (
        "org.apache.flink.kafka.shaded.org.apache.kafka.common.security.plain.PlainLoginModule"
        ' required username="u" password="p\\"w";'
    )
    assert (props["ssl.truststore.type"], props["ssl.truststore.location"]) == ("PEM", "/ca.pem")
    plain = kc.java_client_properties(s, shaded=False)["sasl.jaas.config"]
    assert plain.startswith("org.apache.kafka.common.security.plain.PlainLoginModule required")


def test_kafka_python_checks_fetched_batches_with_the_c_crc32c():
    """kafka-python checks every fetched batch's CRC32C. In pure Python that took 100-240 ms
    for an exactly-once commit's ~650 KB of lists (docs/benchmarks.md): the C version must be
    the one in use."""
    import crc32c
    from kafka.record import util

    assert util.calc_crc32c.__defaults__ == (crc32c.crc32c,)
    assert util.calc_crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value
