"""Dead-letter v1: an invalid input record, its original bytes kept exactly, and why.

>>> dl = DeadLetter.build(b"\\xff", None, "invalid_utf8", "$", "bad", "t", 0, 7, 1)
>>> DeadLetter.from_json(encode_dead_letter(dl)).original_bytes()
b'\\xff'
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from schemas.loader import load_schema

DLQ_SCHEMA: dict[str, Any] = load_schema("dlq.v1.json")
SCHEMA_VERSION = DLQ_SCHEMA["properties"]["schema_version"]["const"]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    payload: str | None
    payload_encoding: str
    key: str | None
    error_code: str
    field: str
    message: str
    topic: str
    partition: int
    offset: int
    received_at: int

    @classmethod
    def build(
        cls, value: bytes | None, key: bytes | None, error_code: str, field: str, message: str,
        topic: str, partition: int, offset: int, received_at: int,
    ) -> DeadLetter:
        """Keep ``value`` exactly: as text when it is UTF-8, else base64."""
        if value is None:
            payload, encoding = None, "null"
        else:
            try:
                payload, encoding = value.decode("utf-8"), "utf8"
            except UnicodeDecodeError:
                payload, encoding = base64.b64encode(value).decode("ascii"), "base64"
        key_b64 = None if key is None else base64.b64encode(key).decode("ascii")
        return cls(payload, encoding, key_b64, error_code, field, message, topic, partition,
                   offset, received_at)

    def original_bytes(self) -> bytes | None:
        if self.payload is None:
            return None
        if self.payload_encoding == "base64":
            return base64.b64decode(self.payload)
        return self.payload.encode("utf-8")

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "payload": self.payload,
            "payload_encoding": self.payload_encoding,
            "key": self.key,
            "error_code": self.error_code,
            "field": self.field,
            "message": self.message,
            "source": {"topic": self.topic, "partition": self.partition, "offset": self.offset},
            "received_at": self.received_at,
        }

    @classmethod
    def from_json(cls, payload: bytes | str) -> DeadLetter:
        doc = json.loads(payload)
        src = doc["source"]
        return cls(doc["payload"], doc["payload_encoding"], doc.get("key"), doc["error_code"],
                   doc["field"], doc["message"], src["topic"], src["partition"], src["offset"],
                   doc["received_at"])


def encode_dead_letter(dead_letter: DeadLetter) -> bytes:
    return json.dumps(dead_letter.to_json(), separators=(",", ":"), ensure_ascii=False).encode()
