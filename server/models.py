"""Where a configured model name points: reinf's own tiny models (built on demand), or a hub id / folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from filelock import FileLock

from .paths import cache_dir

TINY = "reinf-tiny"
TINY_TEST = "reinf-tiny-test"
# The model committed to the repository (present in a source checkout, absent from a wheel).
COMMITTED_TINY = Path(__file__).resolve().parent.parent / "models" / TINY
_MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def is_model_dir(path: Path) -> bool:
    """True when `path` holds a saved model and its tokenizer."""
    return all((path / name).is_file() for name in _MODEL_FILES)


def resolve_model_path(name: str) -> str:
    """The folder or hub id to load for `name`; builds "reinf-tiny" / "reinf-tiny-test" into the cache if needed."""
    if name == TINY:
        cached = cache_dir() / "models" / TINY
        if is_model_dir(cached):
            return str(cached)
        if is_model_dir(COMMITTED_TINY):
            return str(COMMITTED_TINY)
        return str(build_tiny("default", cached))
    if name == TINY_TEST:
        return str(build_tiny("test", cache_dir() / "models" / TINY_TEST))
    return name


def build_tiny(preset: str, out: Path) -> Path:
    """Build a tiny model into `out` unless it is there already; a file lock makes parallel callers wait."""
    if is_model_dir(out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out.parent / f".{out.name}.lock")):
        if is_model_dir(out):  # another process built it while we waited
            return out
        # The core never imports reinf.training; it runs the builder as its own process.
        cmd = [sys.executable, "-m", "reinf.training.tiny", "--preset", preset, "--out", str(out)]
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL)
        if proc.returncode != 0 or not is_model_dir(out):
            raise RuntimeError(
                f"building the {preset!r} tiny model into {out} failed (exit code {proc.returncode}); "
                f"run `{' '.join(cmd)}` to see why"
            )
    return out
