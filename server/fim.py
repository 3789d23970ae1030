"""Fill-in-the-middle prompt formats per model family, told apart by the tokenizer's special tokens, and the one
function that turns a prompt into token ids for the daemon and for every trainer path alike."""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FimTemplate:
    name: str
    prefix: str  # marker before the code above the cursor, as it appears in the rendered prompt
    suffix: str  # marker before the code below the cursor
    middle: str  # marker after which the model writes the missing middle
    stop: tuple[str, ...]  # text that ends a completion (not part of it)
    # The markers' tokens, where they differ from the rendered markers (CodeLlama's carry SentencePiece's "▁").
    tokens: tuple[str, str, str] | None = None

    def render(self, prefix: str, suffix: str) -> str:
        """The prompt in prefix-suffix-middle (PSM) order."""
        if self.name == "plain":
            return prefix
        return f"{self.prefix}{prefix}{self.suffix}{suffix}{self.middle}"

    def split(self, prompt: str) -> tuple[str, str] | None:
        """(prefix, suffix) of a prompt that `render` made (a BOS written as text before it is dropped); None when
        `prompt` is not one. A plain prompt is all prefix."""
        if not self.fills_in:
            return prompt, ""
        start = prompt.find(self.prefix)
        if start < 0 or not prompt.endswith(self.middle):
            return None
        end = len(prompt) - len(self.middle)
        cut = prompt.rfind(self.suffix, start + len(self.prefix), end)
        if cut < 0:
            return None
        return prompt[start + len(self.prefix) : cut], prompt[cut + len(self.suffix) : end]

    @property
    def fills_in(self) -> bool:
        """False for a model with no FIM tokens: it continues the prefix and never sees the suffix."""
        return self.name != "plain"

    def describe(self) -> str:
        """What completions do with this model, for `reinf status`."""
        if self.fills_in:
            return f"fill-in-the-middle ({self.name} tokens)"
        return "prefix only: the model's tokenizer has no fill-in-the-middle tokens, so code after the cursor is unused"


_QWEN_STOPS = (
    "<|endoftext|>",
    "<|fim_pad|>",
    "<|fim_prefix|>",
    "<|fim_suffix|>",
    "<|fim_middle|>",
    "<|im_end|>",
    "<|im_start|>",
)
_STARCODER_STOPS = (
    "<|endoftext|>",
    "<fim_prefix>",
    "<fim_suffix>",
    "<fim_middle>",
    "<fim_pad>",
    "<file_sep>",
    "<filename>",
    "<reponame>",
    "<gh_stars>",
    "<|im_start|>",
    "<|im_end|>",
)

TEMPLATES: dict[str, FimTemplate] = {
    t.name: t
    for t in (
        # Qwen2.5-Coder: repository-level markers end a file's completion too.
        FimTemplate(
            "qwen",
            "<|fim_prefix|>",
            "<|fim_suffix|>",
            "<|fim_middle|>",
            (*_QWEN_STOPS, "<|file_sep|>", "<|repo_name|>"),
        ),
        # reinf-tiny: Qwen's markers without the repository-level ones.
        FimTemplate("reinf", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", _QWEN_STOPS),
        # StarCoder / StarCoder2 / SmolLM
        FimTemplate("starcoder", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", _STARCODER_STOPS),
        # DeepSeek-Coder (full-width bars and "▁" are part of the tokens)
        FimTemplate(
            "deepseek",
            "<｜fim▁begin｜>",
            "<｜fim▁hole｜>",
            "<｜fim▁end｜>",
            ("<｜end▁of▁sentence｜>", "<|EOT|>", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),
        ),
        # CodeLlama: "<PRE> {prefix} <SUF>{suffix} <MID>", each marker one token
        FimTemplate(
            "codellama",
            "<PRE> ",
            " <SUF>",
            " <MID>",
            ("<EOT>", "</s>", "<PRE>", "<SUF>", "<MID>"),
            ("▁<PRE>", "▁<SUF>", "▁<MID>"),
        ),
        # No FIM tokens: continue the prefix and ignore the suffix.
        FimTemplate(
            "plain",
            "",
            "",
            "",
            ("<|endoftext|>", "</s>", "<file_sep>", "<|file_sep|>", "<|im_start|>", "<|im_end|>"),
        ),
    )
}


def detect_template(vocab: Collection[str], model_name: str = "") -> FimTemplate:
    """The template a tokenizer's tokens (special ones included) imply. The model's name is not used: a folder can
    be called anything, and a model without FIM tokens must not be sent markers it never learnt."""
    del model_name
    if "<|fim_prefix|>" in vocab:
        return TEMPLATES["qwen"] if {"<|file_sep|>", "<|repo_name|>"} & set(vocab) else TEMPLATES["reinf"]
    if "<fim_prefix>" in vocab:
        return TEMPLATES["starcoder"]
    if "<｜fim▁begin｜>" in vocab:
        return TEMPLATES["deepseek"]
    if "▁<PRE>" in vocab or "<PRE>" in vocab:
        return TEMPLATES["codellama"]
    return TEMPLATES["plain"]


def get_template(setting: str, vocab: Collection[str], model_name: str = "") -> FimTemplate:
    """`model.fim_template`: "auto" detects; any other value must name a known template."""
    if setting == "auto":
        return detect_template(vocab, model_name)
    if setting not in TEMPLATES:
        raise ValueError(f"model.fim_template must be auto or one of {', '.join(TEMPLATES)}, got {setting!r}")
    return TEMPLATES[setting]


def tokenizer_vocab(tokenizer: Any) -> set[str]:
    """Every token of `tokenizer`, special and added ones included."""
    get_vocab = getattr(tokenizer, "get_vocab", None)  # a stand-in tokenizer may have no vocabulary to list
    return (set(get_vocab()) if get_vocab else set()) | set(getattr(tokenizer, "all_special_tokens", ()))


class PromptCodec:
    """How one tokenizer turns a prompt into the ids the model is fed: the BOS first when the tokenizer adds one,
    each FIM marker of any known family as its own token id (never through the tokenizer, where a marker could
    merge with the text around it), and the text between markers encoded on its own."""

    def __init__(self, tokenizer: Any, vocab: Collection[str] | None = None) -> None:
        self.tokenizer = tokenizer
        vocab = tokenizer_vocab(tokenizer) if vocab is None else vocab
        self.markers: dict[str, int] = {}
        for t in TEMPLATES.values():
            shown_markers = (t.prefix, t.suffix, t.middle)
            for shown, token in zip(shown_markers, t.tokens or shown_markers, strict=True):
                if shown and token in vocab:
                    self.markers[shown] = tokenizer.convert_tokens_to_ids(token)
        # Longest first, so that " <SUF>" wins over a shorter marker it contains.
        names = sorted(self.markers, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(map(re.escape, names)) + ")") if names else None
        self._fim_orders = {(t.prefix, t.suffix, t.middle) for t in TEMPLATES.values() if t.fills_in}
        self.bos_id = _added_bos(tokenizer)

    def encode(self, text: str, keep_last: int | None = None) -> list[int]:
        """The ids of `text` as a prompt; with `keep_last`, at most that many: a FIM prompt keeps its markers, the
        end of the code before the cursor and the start of the code after it (as the daemon cuts one); any other
        prompt keeps its last tokens. The BOS stays in front."""
        pieces = self._split.split(text) if self._split else [text]
        ids: list[int] = []
        for i, piece in enumerate(pieces):
            if i % 2:
                ids.append(self.markers[piece])
            elif piece:
                ids += self._text_ids(piece)
        bos = [self.bos_id] if self.bos_id is not None and (not ids or ids[0] != self.bos_id) else []
        if not bos and self.bos_id is not None:
            bos, ids = ids[:1], ids[1:]  # the prompt brought its own (a chat template that writes it)
        if keep_last is not None and len(bos) + len(ids) > keep_last:
            fim = self._fim_cut(pieces, keep_last - len(bos))
            ids = fim if fim is not None else ids[max(0, len(ids) - max(0, keep_last - len(bos))) :]
        return bos + ids

    def _text_ids(self, piece: str) -> list[int]:
        return self.tokenizer(piece, add_special_tokens=False)["input_ids"]

    def _fim_cut(self, pieces: list[str], budget: int) -> list[int] | None:
        """A prefix-suffix-middle prompt in `budget` ids: the suffix's start gets at most a quarter of what the
        three markers leave, the prefix's end the rest. None when `pieces` are not one such prompt."""
        if len(pieces) != 7 or pieces[6] or tuple(pieces[1:6:2]) not in self._fim_orders or budget < 3:
            return None
        lead = pieces[0]  # a BOS written as text, if anything
        if lead and (self.bos_id is None or self._text_ids(lead) != [self.bos_id]):
            return None
        prefix, suffix = self._text_ids(pieces[2]), self._text_ids(pieces[4])
        room = budget - 3
        keep_suffix = min(len(suffix), room // 4)
        keep_prefix = min(len(prefix), room - keep_suffix)
        p, s, m = (self.markers[x] for x in pieces[1:6:2])
        return [p, *prefix[len(prefix) - keep_prefix :], s, *suffix[:keep_suffix], m]


def _added_bos(tokenizer: Any) -> int | None:
    """The BOS id when the tokenizer puts one in front of what it encodes (Llama's), else None."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    return bos if with_special[:1] == [bos] and without[:1] != [bos] else None


def prompt_codec(tokenizer: Any) -> PromptCodec:
    """The codec of `tokenizer`, made once (listing a vocabulary of 150k tokens takes a while)."""
    codec = getattr(tokenizer, "_reinf_prompt_codec", None)
    if codec is None:
        codec = PromptCodec(tokenizer)
        tokenizer._reinf_prompt_codec = codec
    return codec


def encode_prompt(tokenizer: Any, text: str, keep_last: int | None = None) -> list[int]:
    """The token ids of a prompt, exactly as the daemon fed it to the model (see PromptCodec)."""
    return prompt_codec(tokenizer).encode(text, keep_last)
