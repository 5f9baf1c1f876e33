"""Pseudonymisation: stable keyed pseudonyms, key loading, clear errors without the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from freshrec.cli import main
from freshrec_common.privacy import KEY_ENV, PseudonymKeyError, load_key, pseudonymize


def test_pseudonyms_are_stable_keyed_and_distinct() -> None:
    a, b = b"k" * 16, b"j" * 16
    assert pseudonymize(a, "u1") == pseudonymize(a, "u1")
    assert pseudonymize(a, "u1") != pseudonymize(b, "u1")
    assert pseudonymize(a, "u1") != pseudonymize(a, "u2")
    assert pseudonymize(a, "u1").startswith("p-") and "u1" not in pseudonymize(a, "u1")


def test_key_from_env_wins_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = tmp_path / "key"
    key_file.write_bytes(b"file-key-0123456789\n")
    monkeypatch.delenv(KEY_ENV, raising=False)
    assert load_key(str(key_file)) == b"file-key-0123456789"
    monkeypatch.setenv(KEY_ENV, "env-key-0123456789")
    assert load_key(str(key_file)) == b"env-key-0123456789"


def test_missing_or_short_key_errors_never_show_the_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(PseudonymKeyError, match="no key is given"):
        load_key("")
    with pytest.raises(PseudonymKeyError, match=r"privacy\.key_file: cannot read"):
        load_key(str(tmp_path / "absent"))
    monkeypatch.setenv(KEY_ENV, "short-secret")
    with pytest.raises(PseudonymKeyError, match="shorter than 16 bytes") as err:
        load_key("")
    assert "short-secret" not in str(err.value)


def test_cli_prints_the_mapping(monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(KEY_ENV, "cli-key-0123456789")
    assert main(["pseudonym", "alice", "bob"]) == 0
    lines = capsys.readouterr().out.splitlines()
    key = b"cli-key-0123456789"
    assert lines == [f"alice\t{pseudonymize(key, 'alice')}", f"bob\t{pseudonymize(key, 'bob')}"]
