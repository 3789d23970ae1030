"""Shared fixtures. The tiny test model is built once and cached in the repo's ignored .cache/ folder."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _builder_hash() -> str:
    """Changes whenever the builder changes, so a stale cached test model is never used."""
    h = hashlib.sha256()
    for name in ("tiny.py", "tokenizer_build.py"):
        h.update((REPO / "training" / name).read_bytes())
    return h.hexdigest()[:12]


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    """The folder of the "reinf-tiny-test" model (built on first use, about 15 s on 2 cores)."""
    from reinf.models import TINY_TEST, resolve_model_path

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REINF_CACHE", str(REPO / ".cache" / f"tiny-{_builder_hash()}"))
        return Path(resolve_model_path(TINY_TEST))


@pytest.fixture
def tiny_model_config(tiny_model_path):
    """A ModelConfig that serves the tiny test model on CPU."""
    from reinf.config import ModelConfig

    return ModelConfig(name=str(tiny_model_path), device="cpu", max_context_tokens=128)


@pytest.fixture
def tiny_engine(tiny_model_config):
    """A fresh Engine on the tiny test model (its own adapter state)."""
    from reinf.engine import Engine

    return Engine(tiny_model_config)
