"""The engine's CUDA fast path (server/static_decode.py), run uncompiled on the CPU: same tokens as the eager path.

The CUDA graphs themselves need a GPU (bench/gpu_latency.py measures them); these tests check what the CPU can:
the static cache's bookkeeping, the engine's switch between the paths, and the self-check that turns it off.
"""

from __future__ import annotations

import torch

from reinf.static_decode import StaticDecoder
from tests.test_engine import PREFIX, SUFFIX, _make_adapter


def _static(engine) -> StaticDecoder:  # noqa: ANN001
    """Give an engine the static decoder that CUDA would give it, uncompiled."""
    engine._fast = StaticDecoder(engine.base, engine.context_tokens, compile=False)
    return engine._fast


def _answers(engine) -> list[str]:  # noqa: ANN001
    torch.manual_seed(0)
    greedy = engine.complete(PREFIX, SUFFIX, max_tokens=24, temperature=0).text
    chat = engine.chat([{"role": "user", "content": "Write a function."}], max_tokens=24, temperature=0).text
    torch.manual_seed(1)
    sampled = engine.complete("def f(x):\n    ", "", max_tokens=24, temperature=1.0).text
    return [greedy, chat, sampled]


def test_static_decoding_gives_the_eager_paths_tokens(tiny_engine):
    eager = _answers(tiny_engine)
    assert all(eager)
    fast = _static(tiny_engine)
    assert _answers(tiny_engine) == eager
    assert fast.ready and fast.note.startswith("static cache, checked")
    assert fast._pos > 0  # it really decoded, several requests in one cache


def test_the_check_compares_logits_and_a_mismatch_switches_the_path_off(tiny_engine):
    fast = _static(tiny_engine)
    real = fast._forward
    fast._forward = lambda ids, pos: real(ids, pos) + 1.0  # a "compiler" that gets the numbers wrong
    fast._step = fast._forward
    eager = tiny_engine.complete(PREFIX, SUFFIX, max_tokens=12, temperature=0).text
    assert not fast.ready and "differs from eager decoding" in fast.note
    fast._forward = real
    after_check = fast._pos
    assert tiny_engine.complete(PREFIX, SUFFIX, max_tokens=12, temperature=0).text == eager
    assert fast._pos == after_check  # once off, it stays off: no request goes through it


def test_a_failing_static_path_leaves_the_engine_answering(tiny_engine):
    fast = _static(tiny_engine)

    def broken(ids, pos):  # noqa: ANN001, ANN202
        raise RuntimeError("no CUDA graphs today")

    fast._forward = fast._step = broken
    assert tiny_engine.complete(PREFIX, SUFFIX, max_tokens=8, temperature=0).n_new_tokens > 0
    assert not fast.ready and "RuntimeError: no CUDA graphs today" in tiny_engine.warm_up()


def test_an_active_adapter_decodes_eagerly_and_the_base_goes_back_to_the_fast_path(
    tiny_engine, tiny_model_path, tmp_path
):
    eager_base = tiny_engine.complete(PREFIX, SUFFIX, max_tokens=16, temperature=0).text
    fast = _static(tiny_engine)
    tiny_engine.set_adapter(1, _make_adapter(tiny_model_path, tmp_path / "v1", 1))
    adapted = tiny_engine.complete(PREFIX, SUFFIX, max_tokens=16, temperature=0).text
    assert fast.note == "not checked yet"  # the adapter's request did not use (or check) the static path
    assert adapted != eager_base
    tiny_engine.set_adapter(0, None)
    assert tiny_engine.complete(PREFIX, SUFFIX, max_tokens=16, temperature=0).text == eager_base
    assert fast.ready


def test_a_prompt_that_fills_the_cache_is_refused(tiny_engine):
    fast = StaticDecoder(tiny_engine.base, 8, compile=False)
    try:
        fast.prefill(torch.zeros((1, 8), dtype=torch.long))
    except ValueError as exc:
        assert "shorter than 8 tokens" in str(exc)
    else:
        raise AssertionError("a prompt as long as the cache was accepted")
