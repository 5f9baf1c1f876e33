"""Wire formats of freshrec: versioned JSON Schema files and the codecs checked against them."""

from schemas.dlq import DeadLetter, encode_dead_letter
from schemas.event_fields import DecodeError
from schemas.events import EVENT_TYPES, INTERACTION_TYPES, Event, decode_event
from schemas.recommendation import Recommendation, ScoredItem

__all__ = [
    "EVENT_TYPES",
    "INTERACTION_TYPES",
    "DeadLetter",
    "DecodeError",
    "Event",
    "Recommendation",
    "ScoredItem",
    "decode_event",
    "encode_dead_letter",
]
