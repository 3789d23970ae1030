"""The tiny model's corpus (the Python standard library on this machine) and its byte-level BPE tokenizer."""

from __future__ import annotations

import ast
import hashlib
import sysconfig
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOT = "<|endoftext|>"
FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD = (
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
)
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [EOT, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD, IM_START, IM_END]

# ChatML, as Qwen and others use it: a user turn then "<|im_start|>assistant\n" to generate from.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Folders of the stdlib that are mostly not ordinary Python code, or are huge generated tables.
_SKIP_PARTS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "encodings"}


@dataclass(frozen=True)
class SourceFile:
    path: str  # relative to the stdlib folder, with "/" separators
    text: str


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def split_of(rel_path: str) -> str:
    """ "test" (1 file in 20, for the reported held-out loss), "valid" (1 in 20, for picking the best step)
    or "train", chosen by a hash of the path so the split never depends on the seed."""
    bucket = hashlib.sha1(rel_path.encode()).digest()[0] % 20
    return {0: "test", 1: "valid"}.get(bucket, "train")


def stdlib_sources(
    max_chars: int | None = None, every: int = 1, root: Path | None = None
) -> list[SourceFile]:
    """The stdlib's (or `root`'s) .py files in a stable order; `every` > 1 keeps a hash-chosen 1/every."""
    root = stdlib_root() if root is None else Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no Python standard library at {root}; the tiny model trains on it")
    out: list[SourceFile] = []
    total = 0
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if _SKIP_PARTS.intersection(rel.split("/")[:-1]):
            continue
        if every > 1 and hashlib.sha1(rel.encode()).digest()[1] % every:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if not text.strip() or len(text) > 400_000:
            continue
        out.append(SourceFile(rel, text))
        total += len(text)
        if max_chars is not None and total >= max_chars:
            break
    if not out:
        raise FileNotFoundError(f"found no usable .py files under {root}")
    return out


def chat_pairs(source: SourceFile, max_chars: int = 1500) -> list[tuple[str, str]]:
    """(request, answer) pairs from documented top-level functions: the docstring asks, the code answers."""
    try:
        tree = ast.parse(source.text)
    except (SyntaxError, ValueError):
        return []
    lines = source.text.splitlines(keepends=True)
    pairs = []
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.name.startswith("_"):
            continue
        doc = ast.get_docstring(node)
        code = _segment(lines, node)
        if not doc or not code or len(code) > max_chars:
            continue
        summary = " ".join(doc.strip().split("\n\n")[0].split())
        args = ", ".join(a.arg for a in node.args.args)
        request = f"Write a Python function {node.name}({args}): {summary}"
        pairs.append((request, f"```python\n{code}\n```"))
    return pairs


def _segment(lines: list[str], node: ast.stmt) -> str:
    """`ast.get_source_segment` for a top-level statement, without re-splitting the file each call."""
    if node.end_lineno is None or node.end_col_offset is None:
        return ""
    body = lines[node.lineno - 1 : node.end_lineno]
    last = body[-1].encode()[: node.end_col_offset].decode(errors="replace")  # offsets count UTF-8 bytes
    return "".join([*body[:-1], last])[node.col_offset :]


def train_tokenizer(texts: Iterable[str], vocab_size: int, model_max_length: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (no prefix space, so case, whitespace and indentation round-trip exactly)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOT,
        pad_token=FIM_PAD,
        additional_special_tokens=SPECIAL_TOKENS[1:],
        chat_template=CHAT_TEMPLATE,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
