"""The engine's fast path (server/static_decode.py), run uncompiled on the CPU: same tokens as the eager path.

The CUDA graphs themselves need a GPU (bench/gpu_latency.py measures them); these tests check what the CPU can:
the static cache's bookkeeping, the engine's switch between the paths, the self-check that turns it off, and the
adapters merged in place, which let one recorded decode step serve every adapter.
"""

from __future__ import annotations

import pytest
import torch

from reinf.engine import Engine
from reinf.static_decode import StaticDecoder
from tests.test_engine import PREFIX, SUFFIX, _make_adapter


@pytest.fixture
def fast_engine(tiny_model_config) -> Engine:
    """An engine that takes the fast path on the CPU (uncompiled), as a CUDA engine does by default."""
    return Engine(tiny_model_config, fast_decode=True)


def _answers(engine) -> list[str]:  # noqa: ANN001
    torch.manual_seed(0)
    greedy = engine.complete(PREFIX, SUFFIX, max_tokens=24, temperature=0).text
    chat = engine.chat([{"role": "user", "content": "Write a function."}], max_tokens=24, temperature=0).text
    torch.manual_seed(1)
    sampled = engine.complete("def f(x):\n    ", "", max_tokens=24, temperature=1.0).text
    return [greedy, chat, sampled]


def _greedy(engine) -> str:  # noqa: ANN001
    return engine.complete(PREFIX, SUFFIX, max_tokens=16, temperature=0).text


def test_static_decoding_gives_the_eager_paths_tokens(tiny_engine, fast_engine):
    eager = _answers(tiny_engine)
    assert all(eager) and tiny_engine._fast is None
    assert _answers(fast_engine) == eager
    fast = fast_engine._fast
    assert fast.ready and fast.note.startswith("static cache, checked")
    assert fast._pos > 0  # it really decoded, several requests in one cache


def test_the_check_compares_logits_and_a_mismatch_switches_the_path_off(fast_engine):
    fast_engine._make_fast_decoder()
    fast = fast_engine._fast
    real = fast._forward
    fast._forward = lambda ids, pos: real(ids, pos) + 1.0  # a "compiler" that gets the numbers wrong
    fast._step = fast._forward
    eager = fast_engine.complete(PREFIX, SUFFIX, max_tokens=12, temperature=0).text
    assert not fast.ready and "differs from eager decoding" in fast.note
    fast._forward = real
    after_check = fast._pos
    assert fast_engine.complete(PREFIX, SUFFIX, max_tokens=12, temperature=0).text == eager
    assert fast._pos == after_check  # once off, it stays off: no request goes through it


def test_a_failing_static_path_leaves_the_engine_answering(fast_engine):
    fast_engine._make_fast_decoder()
    fast = fast_engine._fast

    def broken(ids, pos):  # noqa: ANN001, ANN202
        raise RuntimeError("no CUDA graphs today")

    fast._forward = fast._step = broken
    assert fast_engine.complete(PREFIX, SUFFIX, max_tokens=8, temperature=0).n_new_tokens > 0
    assert not fast.ready and "RuntimeError: no CUDA graphs today" in fast_engine.warm_up()


def test_every_adapter_decodes_on_the_fast_path_made_once_for_the_base(
    tiny_engine, fast_engine, tiny_model_path, tmp_path
):
    v1, v2 = (_make_adapter(tiny_model_path, tmp_path / f"v{k}", k) for k in (1, 2))
    v3 = _make_adapter(tiny_model_path, tmp_path / "v3", 3, r=8)  # another rank
    eager = {0: _greedy(tiny_engine)}
    for version, path in ((1, v1), (2, v2), (3, v3)):
        tiny_engine.set_adapter(version, path)
        eager[version] = _greedy(tiny_engine)
    assert len(set(eager.values())) == 4  # each adapter changes what the model says

    assert _greedy(fast_engine) == eager[0]
    fast = fast_engine._fast
    weights = {k: p.data_ptr() for k, p in fast_engine.model.named_parameters()}
    for version, path in ((1, v1), (2, v2), (3, v3), (2, v2), (0, None)):
        fast_engine.set_adapter(version, path)
        assert fast_engine._fast is fast and fast.ready  # same decoder (its graphs stay valid), checked again
        at = fast._pos
        assert _greedy(fast_engine) == eager[version] and fast._pos > at  # served by the fast path
    assert {k: p.data_ptr() for k, p in fast_engine.model.named_parameters()} == weights  # written in place


def test_a_bad_adapter_leaves_the_merged_weights_alone(fast_engine, tiny_model_path, tmp_path):
    from reinf.engine import AdapterError

    v1, v2 = (_make_adapter(tiny_model_path, tmp_path / f"v{k}", k) for k in (1, 2))
    fast_engine.set_adapter(1, v1)
    v1_text = _greedy(fast_engine)
    (v2 / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(AdapterError, match="could not load adapter v2"):
        fast_engine.set_adapter(2, v2)
    assert fast_engine.adapter_version == 1 and _greedy(fast_engine) == v1_text and fast_engine._fast.ready


def test_a_prompt_that_fills_the_cache_is_refused(tiny_engine):
    fast = StaticDecoder(tiny_engine.model, 8, compile=False)
    try:
        fast.prefill(torch.zeros((1, 8), dtype=torch.long))
    except ValueError as exc:
        assert "shorter than 8 tokens" in str(exc)
    else:
        raise AssertionError("a prompt as long as the cache was accepted")


def test_when_recording_the_graph_fails_the_compilers_graphs_take_over(tiny_engine, fast_engine):
    eager = _greedy(tiny_engine)
    fast_engine._make_fast_decoder()
    fast_engine._fast.graphs = "capture"  # as on CUDA: prefill records the graph first; here that cannot work
    assert _greedy(fast_engine) == eager
    fallback = fast_engine._fast
    assert fallback.ready and fallback.graphs != "capture" and fallback._pos > 0
    assert "recording one CUDA graph: static decoding failed" in fast_engine.warm_up()


def test_the_gpu_latency_benchmark_runs_its_steps_on_the_cpu(tmp_path):
    """bench/gpu_latency.py runs only where a GPU is lent; its --cpu-smoke runs the same steps (a Qwen2 with the
    151936-entry tokenizer, both adapters, the swap) on a tiny shape, so that the script does not rot here."""
    import json
    import subprocess
    import sys

    from tests.daemon_proc import REPO

    out = tmp_path / "smoke.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_latency.py"), "--cpu-smoke", "--runs", "1", "--new", "8",
         "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["fast_path_used"] and result["same_text_as_eager"]
    assert result["new_tokens"] == {
        "hf_generate": 8,
        "engine_eager": 8,
        "engine": 8,
        "engine_with_adapter": 8,
    }
    adapter = result["adapter"]
    assert (
        adapter["swapped_in_place"] and adapter["adapters_change_the_text"] and adapter["same_text_as_eager"]
    )
