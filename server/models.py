"""Where a configured model name points, resolved once to a local folder and a pinned revision.

`model.name` may be reinf's own tiny model (built on demand), a known model package (`reinf model fetch`), a local
folder, a `.gguf` file (or a folder holding one), or a hub id. A hub id is looked up in the Hugging Face cache
first: the hub is asked only with a short timeout, and the cached snapshot serves at once when it does not answer.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from .paths import cache_dir

log = logging.getLogger(__name__)

TINY = "reinf-tiny"
TINY_TEST = "reinf-tiny-test"
# The model committed to the repository (present in a source checkout, absent from a wheel).
COMMITTED_TINY = Path(__file__).resolve().parent.parent / "models" / TINY
_MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")
# How long the hub gets to answer before a cached snapshot is used offline (and, with nothing cached, before the
# start-up gives up with a message): well inside the 15 s a user waits for a first word.
HUB_TIMEOUT_S = 5.0


class ModelError(RuntimeError):
    """A model name that cannot be resolved or loaded; the message is one line that says what to do."""


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # as configured
    path: Path  # the local folder transformers loads
    revision: str  # a hub snapshot's commit, a GGUF file's sha256, or "local"
    source: str  # "tiny" | "folder" | "gguf" | "package" | "hub cache" | "hub"

    def describe(self) -> str:
        """One line for the log: what is loaded, from where, at which revision."""
        rev = "" if self.revision == "local" else f" at revision {self.revision[:12]}"
        return f"{self.name} ({self.source}) from {self.path}{rev}"


def is_model_dir(path: Path) -> bool:
    """True when `path` holds a saved model and its tokenizer."""
    return all((path / name).is_file() for name in _MODEL_FILES)


_resolved: dict[tuple[str, str], ResolvedModel] = {}
_resolve_lock = threading.Lock()


def resolve_model(name: str, hub_timeout: float = HUB_TIMEOUT_S) -> ResolvedModel:
    """The local folder and revision `name` stands for. A hub id or a GGUF file is resolved once per process, so
    the daemon and every training run it starts use the same revision."""
    if name in (TINY, TINY_TEST):
        return ResolvedModel(name, Path(_tiny_path(name)), "local", "tiny")
    key = (name, str(cache_dir()))
    with _resolve_lock:
        if key not in _resolved:
            _resolved[key] = _resolve(name, hub_timeout)
        return _resolved[key]


def resolve_model_path(name: str) -> str:
    """The folder to load for `name` (see `resolve_model`)."""
    return str(resolve_model(name).path)


def _tiny_path(name: str) -> str:
    if name == TINY:
        cached = cache_dir() / "models" / TINY
        if is_model_dir(cached):
            return str(cached)
        if is_model_dir(COMMITTED_TINY):
            return str(COMMITTED_TINY)
        return str(build_tiny("default", cached))
    return str(build_tiny("test", cache_dir() / "models" / TINY_TEST))


def _resolve(name: str, hub_timeout: float) -> ResolvedModel:
    from . import gguf, packages

    if name in packages.KNOWN:
        file = packages.installed_gguf(name)
        return ResolvedModel(name, gguf.hf_folder(file), gguf.file_sha256(file), "package")
    path = Path(name).expanduser()
    if path.is_file():
        return ResolvedModel(name, gguf.hf_folder(path), gguf.file_sha256(path), "gguf")
    if path.is_dir():
        if (path / "config.json").is_file():
            return ResolvedModel(name, path, "local", "folder")
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ResolvedModel(name, gguf.hf_folder(ggufs[0]), gguf.file_sha256(ggufs[0]), "gguf")
        what = f"{len(ggufs)} .gguf files (name one)" if ggufs else "no config.json and no .gguf file"
        raise ModelError(
            f"model folder {path} holds {what}: set model.name to a model folder or a .gguf file"
        )
    if name.count("/") != 1 or name.startswith(("/", ".", "~")) or name.endswith(".gguf"):
        raise ModelError(
            f"model {name!r} is not a folder or file on this machine, nor a hub id (org/name), nor a known model "
            f"({', '.join(packages.KNOWN)}): set model.name to a model folder, a .gguf file or one of those"
        )
    return _resolve_hub_id(name, hub_timeout)


def _resolve_hub_id(repo: str, timeout: float) -> ResolvedModel:
    cached = _cached_snapshot(repo)
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    answered = False if offline else _hub_answers(endpoint, repo, timeout)
    if answered:
        from huggingface_hub import snapshot_download

        log.info("the hub at %s answers; checking %s for a newer revision", endpoint, repo)
        try:
            folder = Path(snapshot_download(repo, endpoint=endpoint, etag_timeout=timeout))
            return ResolvedModel(repo, folder, folder.name, "hub")
        except Exception as exc:  # noqa: BLE001 - the hub failed half way: a cached snapshot still serves
            if cached is None:
                raise ModelError(
                    f"model {repo} could not be downloaded from {endpoint}: {type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}"
                ) from exc
            log.warning("the hub failed (%s); using the cached %s", type(exc).__name__, cached.name)
    if cached is not None:
        if not offline and not answered:
            log.warning(
                "the hub at %s did not answer within %.0f s; using the cached %s", endpoint, timeout, repo
            )
        return ResolvedModel(repo, cached, cached.name, "hub cache")
    why = (
        "HF_HUB_OFFLINE is set" if offline else f"the hub ({endpoint}) did not answer within {timeout:.0f} s"
    )
    raise ModelError(
        f"model {repo} is not on this machine and {why}: download it with `huggingface-cli download {repo}` where "
        f"there is a network, or set model.name to a folder or a .gguf file, or run `reinf model fetch NAME` "
        f"for a known model"
    )


def _cached_snapshot(repo: str) -> Path | None:
    """The cached snapshot of `repo` (the revision `main` pointed at when it was downloaded), without any network."""
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(repo, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached (LocalEntryNotFoundError) or an unreadable cache entry
        return None
    return folder if (folder / "config.json").is_file() else None


def _hub_answers(endpoint: str, repo: str, timeout: float) -> bool:
    """Whether the hub answers anything at all within `timeout` seconds. The probe runs on its own thread so that a
    slow name lookup is bounded too, not only the connection."""
    answered = threading.Event()

    def probe() -> None:
        req = urllib.request.Request(f"{endpoint}/api/models/{repo}", method="HEAD")
        try:
            with urllib.request.urlopen(req, timeout=timeout):
                answered.set()
        except urllib.error.HTTPError:  # a 401 or 404 is an answer
            answered.set()
        except (OSError, ValueError):
            pass

    threading.Thread(target=probe, name="reinf-hub-probe", daemon=True).start()
    return answered.wait(timeout)


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
