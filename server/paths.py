"""Where reinf keeps its files, and how it creates them privately (folders 0700, files 0600)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import platformdirs


def reinf_home(environ: Mapping[str, str] | None = None) -> Path:
    """`$REINF_HOME`, else the platform's user data folder."""
    env = os.environ if environ is None else environ
    if env.get("REINF_HOME"):
        return Path(env["REINF_HOME"]).expanduser()
    return Path(platformdirs.user_data_dir("reinf", appauthor=False))


def cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Built models live here, outside REINF_HOME: `$REINF_CACHE`, else the platform's cache folder."""
    env = os.environ if environ is None else environ
    if env.get("REINF_CACHE"):
        return Path(env["REINF_CACHE"]).expanduser()
    return Path(platformdirs.user_cache_dir("reinf", appauthor=False))


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) and make it 0700."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def write_private(path: Path, data: str | bytes) -> None:
    """Write a file atomically with mode 0600 (temp file in the same folder, then rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    """Write JSON privately and atomically."""
    write_private(path, json.dumps(obj, indent=2, sort_keys=True))
