"""ruff runs as part of the tests: lint and format, over every Python folder of the project."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FOLDERS = ["server", "training", "jupyter-ext", "tests", "bench"]


def _ruff() -> list[str]:
    exe = Path(sys.executable).with_name("ruff")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("ruff")
    if found is None:
        pytest.fail("ruff is not installed: it comes with the test extras (pip install -e '.[test]')")
    return [found]


def test_ruff_check() -> None:
    out = subprocess.run([*_ruff(), "check", *FOLDERS], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_format() -> None:
    out = subprocess.run([*_ruff(), "format", "--check", *FOLDERS], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
