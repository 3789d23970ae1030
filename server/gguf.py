"""GGUF files: check that one is whole, then dequantize it once into a Hugging Face folder that serves and trains.

The folder is keyed by the file's sha256, so a file that changes gets a new folder and a renamed copy reuses the
old one. Run as `python -m reinf.gguf FILE OUT` it does the conversion itself, in a process of its own (a 0.5B
model takes a few GB while it is dequantized; the daemon should not keep that memory).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from filelock import FileLock

from .models import ModelError, is_model_dir
from .paths import cache_dir

MAGIC = b"GGUF"
_INDEX = (
    "gguf-sha256.json"  # path -> (size, mtime_ns, sha256): a 0.5 GB file is hashed once, not at every start
)


def file_sha256(path: Path) -> str:
    """The sha256 of a file, remembered by its path, size and modification time."""
    path = path.resolve()
    st = path.stat()
    index_file = cache_dir() / "models" / _INDEX
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError):
        index = {}
    entry = index.get(str(path))
    if entry and entry[:2] == [st.st_size, st.st_mtime_ns]:
        return entry[2]
    digest = sha256_of(path)
    index[str(path)] = [st.st_size, st.st_mtime_ns, digest]
    index_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = index_file.with_name(f".{index_file.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, index_file)
    return digest


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def check_gguf(path: Path) -> None:
    """Raise ModelError naming the file unless it is a whole GGUF file (header, tensor table, tensor data)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise ModelError(
            f"{path} cannot be read ({exc.strerror}): check the path and its permissions"
        ) from exc
    if head[:4] != MAGIC:
        raise ModelError(
            f"{path} is not a GGUF file (it does not start with 'GGUF'): set model.name to a .gguf model"
        )
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
        size = path.stat().st_size
        end = max((t.data_offset + int(t.n_bytes) for t in reader.tensors), default=0)
    except ImportError as exc:
        raise ModelError("reading .gguf files needs the gguf package: pip install gguf") from exc
    except Exception as exc:  # noqa: BLE001 - the reader fails in many ways on a cut file
        raise ModelError(
            f"{path} is not a whole GGUF file ({type(exc).__name__}: {exc}); it may be truncated: download it again"
        ) from exc
    if not reader.tensors or end > size:
        raise ModelError(
            f"{path} is truncated ({size:,} bytes, its tensors need {end:,}): download or fetch it again"
        )


def hf_folder(path: Path) -> Path:
    """The Hugging Face folder dequantized from the GGUF file `path`, made now if it is not cached yet."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ModelError(f"{path} does not exist: set model.name to a .gguf file on this machine")
    digest = file_sha256(path)
    out = cache_dir() / "models" / f"gguf-{digest[:16]}"
    if is_model_dir(out):
        return out
    check_gguf(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out.parent / f".{out.name}.lock")):
        if is_model_dir(out):
            return out
        cmd = [sys.executable, "-m", "reinf.gguf", str(path), str(out)]
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if proc.returncode != 0 or not is_model_dir(out):
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise ModelError(
                f"dequantizing {path} into {out} failed: {last}; run `{' '.join(cmd)}` to see why"
            )
    return out


def convert(src: Path, out: Path) -> None:
    """Dequantize `src` into the folder `out` (float32 safetensors, its tokenizer and chat template)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kw = {"gguf_file": src.name}
    tok = AutoTokenizer.from_pretrained(src.parent, **kw)
    loaded = AutoModelForCausalLM.from_pretrained(src.parent, dtype=torch.float32, **kw)
    # A model loaded from GGUF refuses save_pretrained: copy its weights into one made from its config.
    config = AutoConfig.from_pretrained(src.parent, **kw)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if k not in _tied_keys(model)]
    if missing or unexpected:
        raise RuntimeError(
            f"weights do not match the config: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    del loaded
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "source.json").write_text(json.dumps({"gguf": str(src), "sha256": sha256_of(src)}, indent=2))
    os.replace(tmp, out)


def _tied_keys(model) -> set[str]:
    tied = getattr(model, "_tied_weights_keys", None) or []
    return set(tied if not isinstance(tied, dict) else tied.keys())


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m reinf.gguf FILE.gguf OUT_FOLDER", file=sys.stderr)
        return 2
    convert(Path(args[0]), Path(args[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
