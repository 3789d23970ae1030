"""Fill-in-the-middle prompt formats per model family, and how to tell which one a tokenizer speaks."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass


@dataclass(frozen=True)
class FimTemplate:
    name: str
    prefix: str  # marker before the code above the cursor
    suffix: str  # marker before the code below the cursor
    middle: str  # marker after which the model writes the missing middle
    stop: tuple[str, ...]  # text that ends a completion (not part of it)

    def render(self, prefix: str, suffix: str) -> str:
        """The prompt in prefix-suffix-middle (PSM) order."""
        if self.name == "plain":
            return prefix
        return f"{self.prefix}{prefix}{self.suffix}{suffix}{self.middle}"


_QWEN_STOPS = ("<|endoftext|>", "<|fim_pad|>", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")

TEMPLATES: dict[str, FimTemplate] = {
    t.name: t
    for t in (
        # Qwen2.5-Coder
        FimTemplate(
            "qwen",
            "<|fim_prefix|>",
            "<|fim_suffix|>",
            "<|fim_middle|>",
            (*_QWEN_STOPS, "<|file_sep|>", "<|repo_name|>", "<|im_end|>"),
        ),
        # reinf-tiny was trained on Qwen's markers.
        FimTemplate(
            "reinf", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", (*_QWEN_STOPS, "<|im_end|>")
        ),
        # StarCoder / StarCoder2
        FimTemplate(
            "starcoder",
            "<fim_prefix>",
            "<fim_suffix>",
            "<fim_middle>",
            ("<|endoftext|>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<fim_pad>", "<file_sep>"),
        ),
        # DeepSeek-Coder (full-width bars and "▁" are part of the tokens)
        FimTemplate(
            "deepseek",
            "<｜fim▁begin｜>",
            "<｜fim▁hole｜>",
            "<｜fim▁end｜>",
            ("<｜end▁of▁sentence｜>", "<|EOT|>", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),
        ),
        # CodeLlama: "<PRE> {prefix} <SUF>{suffix} <MID>"
        FimTemplate("codellama", "<PRE> ", " <SUF>", " <MID>", ("<EOT>", "</s>", "<PRE>", "<SUF>", "<MID>")),
        # No FIM tokens: continue the prefix and ignore the suffix.
        FimTemplate("plain", "", "", "", ("<|endoftext|>", "</s>")),
    )
}


def detect_template(vocab: Collection[str], model_name: str = "") -> FimTemplate:
    """The template a tokenizer's vocabulary (its tokens, special ones included) or its model name implies."""
    name = model_name.lower()
    if "<|fim_prefix|>" in vocab:
        return TEMPLATES["qwen"] if "qwen" in name else TEMPLATES["reinf"]
    if "<fim_prefix>" in vocab:
        return TEMPLATES["starcoder"]
    if "<｜fim▁begin｜>" in vocab:
        return TEMPLATES["deepseek"]
    if "▁<PRE>" in vocab or "<PRE>" in vocab:
        return TEMPLATES["codellama"]
    for family in ("qwen", "starcoder", "deepseek", "codellama"):
        if family in name.replace("-", "").replace("_", ""):
            return TEMPLATES[family]
    return TEMPLATES["plain"]


def get_template(setting: str, vocab: Collection[str], model_name: str = "") -> FimTemplate:
    """`model.fim_template`: "auto" detects; any other value must name a known template."""
    if setting == "auto":
        return detect_template(vocab, model_name)
    if setting not in TEMPLATES:
        raise ValueError(f"model.fim_template must be auto or one of {', '.join(TEMPLATES)}, got {setting!r}")
    return TEMPLATES[setting]
