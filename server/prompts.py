"""Prompts for the model, cut to a token budget: FIM prompts for completions and chat-template prompts for chat.

The engine asks for a prompt that leaves room for the answer; what does not fit is cut where it matters least:
the code far before the cursor and far after it, the oldest turns of a conversation. Every prompt becomes ids
through the codec the trainer uses too (fim.PromptCodec), so both see the same tokens, BOS included."""

from __future__ import annotations

from typing import Any

from .fim import FimTemplate, PromptCodec


class Prompts:
    def __init__(self, tokenizer: Any, fim: FimTemplate, codec: PromptCodec) -> None:
        self.tokenizer = tokenizer
        self.template = fim
        self.codec = codec

    def encode(self, text: str, special: bool = True) -> list[int]:
        """A whole prompt's ids (`special`), or a piece of text's alone."""
        if special:
            return self.codec.encode(text)
        return self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]

    def keep_tail(self, text: str, n: int) -> str:
        """The end of `text` that is at most about `n` tokens long."""
        if n <= 0:
            return ""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        offsets = enc["offset_mapping"]
        return text if len(offsets) <= n else text[offsets[-n][0] :]

    def keep_head(self, text: str, n: int) -> str:
        """The start of `text` that is at most about `n` tokens long."""
        if n <= 0:
            return ""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        offsets = enc["offset_mapping"]
        return text if len(offsets) <= n else text[: offsets[n - 1][1]]

    def fim(self, prefix: str, suffix: str, budget: int) -> tuple[str, list[int]]:
        """The FIM prompt in at most `budget` tokens: when too long, the prefix is cut from the left and the
        suffix from the right (the suffix gets at most a quarter: the code after the cursor matters less)."""
        fim = self.template
        if not fim.fills_in:
            suffix = ""
        prompt = fim.render(prefix, suffix)
        ids = self.encode(prompt)
        if len(ids) <= budget:
            return prompt, ids
        overhead = len(self.encode(fim.render("", "")))
        n_suffix = len(self.encode(suffix, special=False))
        keep_suffix = min(n_suffix, (budget - overhead) // 4)
        suffix = self.keep_head(suffix, keep_suffix)
        keep_prefix = budget - overhead - keep_suffix
        for _ in range(4):  # joint tokenization can differ by a token or two at the seams
            prompt = fim.render(self.keep_tail(prefix, keep_prefix), suffix)
            ids = self.encode(prompt)
            if len(ids) <= budget:
                return prompt, ids
            keep_prefix -= len(ids) - budget
        return self.tokenizer.decode(ids[-budget:]), ids[-budget:]

    def chat(self, messages: list[dict], budget: int) -> tuple[str, list[int]]:
        """The chat-template prompt in at most `budget` tokens: when too long, the oldest turns go first, then
        the start of the last one. `messages` is cut in place."""
        for _ in range(len(messages) + 4):
            prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = self.encode(prompt)
            if len(ids) <= budget:
                return prompt, ids
            turns = [i for i, m in enumerate(messages) if m["role"] != "system"]
            if len(turns) > 1:
                del messages[turns[0]]
            else:
                last = messages[-1]
                n = len(self.encode(last["content"], special=False))
                last["content"] = self.keep_tail(last["content"], n - (len(ids) - budget) - 2)
        return self.tokenizer.decode(ids[-budget:]), ids[-budget:]
