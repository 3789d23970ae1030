"""Inline-completion latency through vLLM and through the local engine, on the same model, in one run.

Two real daemons over TCP, one with model.backend = "local", one with model.backend = "vllm" (the daemon starts
vllm serve itself, from `make setup-vllm`'s .venv-vllm). Each gets the same sequence of completions, each at a
new function (so that vLLM's prefix cache cannot answer from an earlier identical prompt), paced as an editor
sends them. Greedy (model.temperature = 0) so that both do the same work: the share of identical suggestions
is reported too. Writes bench/results/vllm_latency.json.

    python bench/vllm_latency.py [--model reinf-tiny] [--n 60]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.latency import summarise  # noqa: E402
from tests.daemon_proc import DaemonProcess, daemon_env  # noqa: E402

GAP_S = 0.05
NAMES = ["load", "parse", "merge", "split", "count", "render", "check", "fetch", "store", "scale"]


def documents(n: int) -> list[str]:
    return [f"import json\n\n\ndef {NAMES[i % len(NAMES)]}_{i}(path, items):\n    " + "\n" for i in range(n)]


def run(backend: str, model: str, docs: list[str], parent: str | None) -> dict:
    with tempfile.TemporaryDirectory(dir=parent) as tmp:
        home = Path(tmp) / "home"
        env = daemon_env(home, model_backend=backend, model_temperature="0", model_seed="0")
        env["REINF_MODEL_NAME"] = model
        t0 = time.monotonic()
        daemon = DaemonProcess(home, env).start(timeout=1800)
        start_s = time.monotonic() - t0
        try:
            c = daemon.client("bench")
            for i in range(5):  # warm-up
                uri = f"file:///bench/warm{i}.py"
                c.open_document(uri, docs[i])
                c.inline_completion(uri, 3, 4)
            times, texts = [], []
            for i, doc in enumerate(docs):
                uri = f"file:///bench/doc{i}.py"
                c.open_document(uri, doc)
                t = time.perf_counter()
                items = c.inline_completion(uri, 3, 4)
                times.append((time.perf_counter() - t) * 1000.0)
                texts.append(items[0]["insertText"] if items else "")
                time.sleep(GAP_S)
            status = c.status()
            c.close()
        finally:
            daemon.stop(timeout=60)
    return {
        "start_s": round(start_s, 1),
        "latency": summarise(times),
        "texts": texts,
        "device": status["device"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="reinf-tiny", help="model.name for both daemons")
    ap.add_argument("--n", type=int, default=60, help="completions per backend")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "vllm_latency.json"))
    args = ap.parse_args()
    if not (REPO / ".venv-vllm" / "bin" / "vllm").exists():
        sys.exit("bench/vllm_latency.py: no .venv-vllm; run `make setup-vllm` first")
    from reinf.models import resolve_model_path

    model = resolve_model_path(args.model)
    docs = documents(args.n)
    parent = os.environ.get("TMPDIR")
    local = run("local", model, docs, parent)
    vllm = run("vllm", model, docs, parent)
    same = sum(a == b for a, b in zip(local.pop("texts"), vllm.pop("texts"), strict=True)) / len(docs)
    result = {
        "what": "inline completion round trip through a real daemon over TCP, greedy, max_new_tokens default",
        "model": args.model,
        "n": args.n,
        "local": local,
        "vllm": vllm,
        "ratio_vllm_over_local": {
            "p50": round(vllm["latency"]["p50_ms"] / local["latency"]["p50_ms"], 3),
            "p95": round(vllm["latency"]["p95_ms"] / local["latency"]["p95_ms"], 3),
        },
        "identical_suggestions": round(same, 3),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load": os.getloadavg()[0]},
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
