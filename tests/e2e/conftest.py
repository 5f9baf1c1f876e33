"""e2e fixtures: the same real Kafka broker as the integration layer.

The fixtures are imported from ``tests/integration/conftest.py`` (not moved), so both layers
share one implementation; a run of both layers starts one broker per layer.
"""

from tests.integration.conftest import fresh_topic, kafka_broker  # noqa: F401
