"""Inline completions on held-out code in a house style (bench/house_style.py), with the shipped defaults.

Two parts:
- **truncation**: at each place an editor asks (a line's start, after `=`, `(` and `: `), the rest of the line is
  taken out and the default model fills it in (greedy). The raw generation (model.max_new_tokens) and the
  suggestion truncate.py makes of the same tokens (stopping generation where it stops) are each put back: the
  share that leaves the file parseable, the share that ends inside an identifier the model went on with, and
  the tokens generated.
- **developer**: a simulated developer types each file top to bottom through a real daemon over the real
  protocol (didOpen/didChange, textDocument/inlineCompletion, reinf/feedback). At each such place they accept a
  suggestion that is what they would type next (at least 4 characters), accept the part that matches as far as a
  word boundary (at least 3 characters), or dismiss it and type the truth; the daemon follows what they type as
  corrections. Figures: acceptance rate, accepted characters per suggestion, characters typed by hand per file,
  request latency p50/p95, corrections stored.

Learning from these events (a run every K events, before/after figures and baselines) is not measured here: the
trainer does not train on completion events yet.

    python bench/completions.py [--quick] [--out bench/results/completions.json]
"""

from __future__ import annotations

import argparse
import ast
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from house_style import generate  # noqa: E402
from latency import summarise  # noqa: E402

from tests.daemon_proc import DaemonProcess, daemon_env  # noqa: E402

MIN_ACCEPT = 4  # characters: a shorter suggestion is quicker typed than read
MIN_PARTIAL = 3


def ask_positions(text: str) -> list[int]:
    """Offsets where an editor asks for a completion: after a line's indentation, after `= `, `(` and `: `."""
    out, start = [], 0
    for line in text.split("\n"):
        stripped = line.lstrip()
        if stripped:
            out.append(start + len(line) - len(stripped))
            for token in ("= ", "(", ": "):
                i = line.find(token)
                while i >= 0:
                    j = start + i + len(token)
                    if j < start + len(line.rstrip()):
                        out.append(j)
                    i = line.find(token, i + 1)
        start += len(line) + 1
    return sorted(set(out))


def _ident(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def parses(source: str) -> bool:
    try:
        ast.parse(source)
    except SyntaxError:
        return False
    return True


def common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def line_col(text: str, offset: int) -> tuple[int, int]:
    before = text[:offset]
    return before.count("\n"), offset - (before.rfind("\n") + 1)


def _recorder(texts: list[str]):  # noqa: ANN202
    def record(text: str) -> bool:
        texts.append(text)
        return False

    return record


# -- truncation --------------------------------------------------------------------------------------


def measure_truncation(files: dict[str, str], limit: int) -> dict:
    from reinf.config import Config
    from reinf.engine import Engine
    from reinf.truncate import completion_scope

    cfg = Config()
    engine = Engine(cfg.model)
    n = cfg.model.max_new_tokens
    rows = []
    for name, truth in files.items():
        for pos in ask_positions(truth)[:limit]:
            line_end = truth.find("\n", pos)
            prefix, suffix = truth[:pos], truth[line_end:] if line_end >= 0 else ""
            texts: list[str] = []  # the text after each token
            long = engine.complete(
                prefix, suffix, max_tokens=n + 16, temperature=0, stop=_recorder(texts)
            ).text
            raw = texts[min(n, len(texts)) - 1] if texts else ""
            scope = completion_scope(cfg.completions, prefix, suffix, "python")
            fired = next((i for i, t in enumerate(texts[:n]) if scope.ended(t)), None)
            upto = texts[fired] if fired is not None else raw
            reason = "stop" if fired is not None or len(texts) < n else "length"
            scoped = scope.finish(upto, reason)
            rows.append(
                {
                    "file": name,
                    "raw": raw,
                    "scoped": scoped,
                    "long": long,
                    "prefix": prefix,
                    "suffix": suffix,
                    "tokens_raw": min(n, len(texts)),
                    "tokens_scoped": (fired + 1) if fired is not None else min(n, len(texts)),
                }
            )

    def figures(key: str) -> dict:
        shown = [r for r in rows if r[key].strip()]
        ok = sum(parses(r["prefix"] + r[key] + r["suffix"]) for r in shown)
        mid = sum(
            bool(r[key]) and _ident(r[key][-1]) and r["long"].startswith(r[key])
            and len(r["long"]) > len(r[key]) and _ident(r["long"][len(r[key])])
            for r in shown
        )  # fmt: skip
        return {
            "suggestions": len(shown),
            "parseable_pct": round(100 * ok / max(1, len(shown)), 1),
            "mid_identifier_pct": round(100 * mid / max(1, len(shown)), 1),
            "mean_chars": round(sum(len(r[key]) for r in shown) / max(1, len(shown)), 1),
            "mean_lines": round(sum(r[key].count("\n") + 1 for r in shown) / max(1, len(shown)), 2),
        }

    return {
        "positions": len(rows),
        "nothing_inserted_parseable_pct": round(
            100 * sum(parses(r["prefix"] + r["suffix"]) for r in rows) / max(1, len(rows)), 1
        ),
        "raw": figures("raw"),
        "scoped": figures("scoped"),
        "tokens_per_request": {
            "raw": round(sum(r["tokens_raw"] for r in rows) / max(1, len(rows)), 1),
            "scoped": round(sum(r["tokens_scoped"] for r in rows) / max(1, len(rows)), 1),
        },
        "examples": [
            {k: r[k][-60:] if k == "prefix" else r[k][:160] for k in ("prefix", "raw", "scoped")}
            for r in rows[:6]
        ],
    }


# -- the simulated developer -------------------------------------------------------------------------


def simulate_developer(files: dict[str, str], parent: str | None) -> dict:
    with tempfile.TemporaryDirectory(dir=parent) as tmp:
        home = Path(tmp) / "home"
        # The shipped defaults but for a seed (reproducible sampling) and no training run.
        daemon = DaemonProcess(home, daemon_env(home, model_name="reinf-tiny", model_seed="0")).start()
        try:
            return _type_files(daemon, files, Path(tmp))
        finally:
            daemon.stop()


def _type_files(daemon: DaemonProcess, files: dict[str, str], tmp: Path) -> dict:
    c = daemon.client("bench-developer")
    latencies: list[float] = []
    counts = {"asked": 0, "shown": 0, "accepted": 0, "partially_accepted": 0, "dismissed": 0}
    accepted_chars, typed_by_hand = 0, {}
    for name, truth in files.items():
        uri = f"file:///house/{name}"
        version = 1
        c.open_document(uri, "", version=version)
        asks = ask_positions(truth)
        pos, hand = 0, 0
        while pos < len(truth):
            if pos in asks:
                version += 1
                c.notify(
                    "textDocument/didChange",
                    {
                        "textDocument": {"uri": uri, "version": version},
                        "contentChanges": [{"text": truth[:pos]}],
                    },
                )
                line, col = line_col(truth, pos)
                t0 = time.perf_counter()
                items = c.inline_completion(uri, line, col)
                latencies.append((time.perf_counter() - t0) * 1000)
                counts["asked"] += 1
                if items:
                    s, iid = items[0]["insertText"], items[0]["command"]["arguments"][0]["interaction_id"]
                    counts["shown"] += 1
                    k = common_prefix(s, truth[pos:])
                    if k == len(s) and k >= MIN_ACCEPT:
                        event = {"event": "accepted", "accepted_chars": k}
                    else:
                        # Accept-word stops at word ends: keep the match up to the last one.
                        while 0 < k < len(s) and _ident(s[k - 1]) and _ident(s[k]):
                            k -= 1
                        if k >= MIN_PARTIAL:
                            words = len(
                                [w for w in "".join(ch if _ident(ch) else " " for ch in s[:k]).split()]
                            )
                            event = {
                                "event": "partially_accepted",
                                "accepted_chars": k,
                                "accepted_words": words,
                            }
                        else:
                            k, event = 0, {"event": "dismissed"}
                    c.request("reinf/feedback", {"interaction_id": iid, "shown_ms": 600, **event})
                    counts[event["event"]] += 1
                    accepted_chars += k
                    pos += k
                    if k and event["event"] == "accepted":
                        continue
            nxt = next((a for a in asks if a > pos), len(truth))
            hand += nxt - pos
            pos = nxt
        version += 1
        c.notify(
            "textDocument/didChange",
            {"textDocument": {"uri": uri, "version": version}, "contentChanges": [{"text": truth}]},
        )
        c.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
        typed_by_hand[name] = hand
    out = tmp / "export.jsonl"
    c.request("reinf/export", {"format": "jsonl", "path": str(out)})
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    corrections = [x for r in rows for x in (r.get("corrections") or [])]
    shown = max(1, counts["shown"])
    return {
        **counts,
        "acceptance_rate": round(counts["accepted"] / shown, 4),
        "partial_rate": round(counts["partially_accepted"] / shown, 4),
        "accepted_chars_per_suggestion": round(accepted_chars / shown, 2),
        "typed_by_hand_per_file": round(sum(typed_by_hand.values()) / max(1, len(typed_by_hand)), 1),
        "file_chars_per_file": round(sum(len(t) for t in files.values()) / max(1, len(files)), 1),
        "latency": summarise(latencies) if latencies else {},
        "corrections_stored": len(corrections),
        "corrections_truncated": sum(bool(x["truncated"]) for x in corrections),
        "correction_examples": [x["typed"][:80] for x in corrections[:5]],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="two files, fewer places")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "completions.json")
    ap.add_argument("--tmp", default=None, help="parent folder for the daemon's REINF_HOME")
    args = ap.parse_args()
    files = {k: v for k, v in generate(args.seed, 6).items() if k != "errors.py"}
    if args.quick:
        files = dict(list(files.items())[:2])
    t0 = time.time()
    truncation = measure_truncation(files, limit=30 if args.quick else 10_000)
    developer = simulate_developer(files, args.tmp)
    result = {
        "benchmark": "completions",
        "quick": args.quick,
        "seed": args.seed,
        "files": len(files),
        "model": "reinf-tiny (default)",
        "machine": platform.platform(),
        "wall_s": round(time.time() - t0, 1),
        "truncation": truncation,
        "developer": developer,
        "learning": "not measured: the trainer does not train on completion events yet",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    t, d = truncation, developer
    print(
        f"truncation, {t['positions']} places ({t['nothing_inserted_parseable_pct']}% parse with nothing put back):"
    )
    for key in ("raw", "scoped"):
        f = t[key]
        print(
            f"  {key:7s} {f['suggestions']:4d} suggestions  parseable {f['parseable_pct']:5.1f}%  "
            f"mid-identifier {f['mid_identifier_pct']:5.1f}%  {f['mean_chars']:6.1f} chars  "
            f"{t['tokens_per_request'][key]:5.1f} tokens"
        )
    print(
        f"developer: {d['shown']} shown of {d['asked']} asked; accepted {100 * d['acceptance_rate']:.1f}%, "
        f"partly {100 * d['partial_rate']:.1f}%; {d['accepted_chars_per_suggestion']} accepted chars per suggestion; "
        f"{d['typed_by_hand_per_file']} of {d['file_chars_per_file']} chars typed by hand per file; "
        f"latency p50 {d['latency'].get('p50_ms')} ms p95 {d['latency'].get('p95_ms')} ms; "
        f"{d['corrections_stored']} corrections stored"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
