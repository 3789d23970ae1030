"""One test per secret pattern: the secret is gone, the surrounding code stays."""

from __future__ import annotations

import pytest

from reinf.redact import redact, redact_obj

CASES = {
    "private_key": "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7x\nabc\n-----END RSA PRIVATE KEY-----",
    "aws_access_key": "AKIA" + "Z7XQ4RTY2PLM9WNB",
    "github_token": "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8",
    "openai_key": "sk-proj-" + "Abcdefghijklmnopqrstuvwx123456",
    "slack_token": "xoxb-" + "123456789012-abcdefABCDEF",
    "google_api_key": "AIza" + "SyA1234567890abcdefghijklmnopqrstuv",
    "stripe_key": "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc",
    "hf_token": "hf_" + "abcdefghijklmnopqrstuvwxyzABCDEFGH",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_known_token_formats(name: str) -> None:
    secret = CASES[name]
    text = f"client = Client(key={secret!r})\nprint('done')"
    out = redact(text)
    assert secret not in out and "[REDACTED" in out
    assert out.startswith("client = Client(key=") and out.endswith("print('done')")


def test_password_in_url() -> None:
    out = redact("db = connect('postgres://admin:hunter2secret@db.internal:5432/app')")
    assert "hunter2secret" not in out and "postgres://admin:[REDACTED]@db.internal:5432/app" in out


def test_bearer_header() -> None:
    out = redact('headers = {"Authorization": "Bearer abcdEFGH1234ijklMNOP5678"}')
    assert "abcdEFGH1234ijklMNOP5678" not in out and "Bearer [REDACTED]" in out


def test_assignment_of_a_password_or_api_key() -> None:
    out = redact('DB_PASSWORD = "correct-horse-battery"\napi_key: \'k3y-v4lue-123\'')
    assert "correct-horse-battery" not in out and "k3y-v4lue-123" not in out
    assert 'DB_PASSWORD = "[REDACTED]"' in out


def test_ordinary_code_is_left_alone() -> None:
    code = "def token_count(tokens: list[str]) -> int:\n    password_field = form['password']\n    return len(tokens)\n"
    assert redact(code) == code


def test_nested_values() -> None:
    secret = CASES["github_token"]
    out = redact_obj({"cells": [f"t = '{secret}'"], "n": 3})
    assert secret not in out["cells"][0] and out["n"] == 3
