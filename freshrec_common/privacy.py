"""Optional pseudonymisation of user ids with a keyed HMAC.

With ``privacy.pseudonymize_users = true`` the job replaces every user id by
``"p-" + hex(HMAC-SHA256(key, user_id))[:32]`` right after validation: state, metrics and the
recommendations topic only ever see the pseudonym. The key comes from the environment
variable ``FRESHREC_PSEUDONYM_KEY`` or from the file ``privacy.key_file``; it is never a
setting, never logged and never part of the job graph (each operator reads it when it
opens). The storefront, which holds the key too, maps back by computing the pseudonym of
its own user ids: ``freshrec pseudonym USER_ID...`` or :func:`pseudonymize`.

>>> pseudonymize(b"secret", "u42")
'p-168f3ef0b95e3bc5eea6df8da6e5280e'
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

KEY_ENV = "FRESHREC_PSEUDONYM_KEY"
_MIN_KEY_BYTES = 16


class PseudonymKeyError(ValueError):
    """The pseudonymisation key is missing or too short (the message never contains it)."""


def pseudonymize(key: bytes, user_id: str) -> str:
    """The stable pseudonym of ``user_id`` under ``key``."""
    return "p-" + hmac.new(key, user_id.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def load_key(key_file: str) -> bytes:
    """The key from ``FRESHREC_PSEUDONYM_KEY``, else from ``key_file``."""
    raw = os.environ.get(KEY_ENV)
    if raw is not None:
        key = raw.encode("utf-8")
        where = f"the environment variable {KEY_ENV}"
    elif key_file:
        try:
            key = Path(key_file).read_bytes().strip()
        except OSError as exc:
            raise PseudonymKeyError(
                f"privacy.key_file: cannot read {key_file}: {exc.strerror}") from None
        where = f"privacy.key_file ({key_file})"
    else:
        raise PseudonymKeyError(
            f"privacy.pseudonymize_users is on but no key is given: set {KEY_ENV} or "
            "privacy.key_file")
    if len(key) < _MIN_KEY_BYTES:
        raise PseudonymKeyError(f"the pseudonymisation key from {where} is shorter than "
                                f"{_MIN_KEY_BYTES} bytes")
    return key
