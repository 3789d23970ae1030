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

- **learning**: the same developer types the project's other files while the daemon learns from what they do:
  every K suggestions with their final event (accepted, or dismissed after a partial accept or none) the
  daemon's threshold (training.min_new_completions = K) starts a training run, and the adapter it publishes is
  hot-swapped in. Before the first run and after every run,
  the developer's figures on held-out files of the same project, which no run saw (bench/completion_baselines.py,
  offline through the daemon's Engine, greedy); and baselines trained offline on the same events: no learning
  (the base), SFT on the accepted suggestions, and a FIM fine-tune on the files typed so far. Writes a PNG
  beside the JSON.

    python bench/completions.py [--quick] [--out bench/results/completions.json]
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from baselines import general_loss, general_texts, loss_change_pct  # noqa: E402
from completion_baselines import (  # noqa: E402
    Suggester,
    _ident,
    accepted_pairs,
    ask_positions,
    figures,
    file_pairs,
    read_export,
    train_lora,
    type_file,
)
from house_style import generate  # noqa: E402
from latency import summarise  # noqa: E402
from learning import run_summary, wait_for_run  # noqa: E402

from tests.daemon_proc import DaemonProcess, daemon_env  # noqa: E402


def parses(source: str) -> bool:
    try:
        ast.parse(source)
    except SyntaxError:
        return False
    return True


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


# -- the simulated developer, and the daemon learning from them ------------------------------------------

# The targets: held-out acceptance up this many points after this many events, ahead of the baselines
# that keep the model sound, with the loss on general code at most this much above the base's.
TARGET_GAIN_POINTS = 15.0
TARGET_EVENTS = 500
MAX_GENERAL_LOSS_CHANGE_PCT = 5.0

# Speed only: the benchmark waits while a run trains, so the trainer runs at normal priority (as learning.py).
BUDGET = {"training_nice": "0"}


class Developer:
    """Types files through a real daemon over the real protocol. Every suggestion gets one final event (after a
    partial accept, the rest is dismissed); every `every` of them the daemon's threshold
    (training.min_new_completions) starts a run, which the developer waits for, as a user would not notice."""

    def __init__(self, daemon: DaemonProcess, every: int) -> None:
        self.c = daemon.client("bench-developer")
        self.every = every
        self.latencies: list[float] = []
        self.events = 0
        self.checkpoints: list[dict] = [{"events": 0, "adapter_version": 0, "run": None, "typed": {}}]
        self.interactions: list[str] = []  # one per event, in order
        self.typed: dict[str, int] = {}  # file → offset of the latest place asked at: what has been typed

    def type_files(self, files: dict[str, str]) -> list[dict]:
        return [self.type_file(name, truth) for name, truth in files.items()]

    def type_file(self, name: str, truth: str) -> dict:
        uri, version = f"file:///house/{name}", [1]
        self.c.open_document(uri, "", version=1)

        def change(text: str) -> None:
            version[0] += 1
            self.c.notify(
                "textDocument/didChange",
                {"textDocument": {"uri": uri, "version": version[0]}, "contentChanges": [{"text": text}]},
            )

        def suggest(pos: int) -> tuple[str, str] | None:
            change(truth[:pos])
            self.typed[name] = pos
            line, col = line_col(truth, pos)
            t0 = time.perf_counter()
            items = self.c.inline_completion(uri, line, col)
            self.latencies.append((time.perf_counter() - t0) * 1000)
            if not items:
                return None
            return items[0]["insertText"], items[0]["command"]["arguments"][0]["interaction_id"]

        def feedback(iid: str, event: dict) -> None:
            self.c.request("reinf/feedback", {"interaction_id": iid, "shown_ms": 600, **event})
            if event["event"] == "partially_accepted":
                self.c.request("reinf/feedback", {"interaction_id": iid, "event": "dismissed"})
            self.events += 1
            self.interactions.append(iid)
            if self.every and self.events % self.every == 0:
                self.wait_for_run()

        counts = type_file(truth, suggest, feedback)
        change(truth)
        self.c.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
        return counts

    def wait_for_run(self) -> None:
        """Wait for the run the threshold starts, and note which adapter serves after it."""
        before = self.checkpoints[-1]["run"]["run_id"] if self.checkpoints[-1]["run"] else 0
        deadline = time.monotonic() + 60
        while not self._runs_after(before):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no run started after {self.events} completion events")
            time.sleep(0.5)
        run = run_summary(wait_for_run(self.c, before, timeout=3600))
        version = self.c.status()["adapter_version"]
        self.checkpoints.append(
            {"events": self.events, "adapter_version": version, "run": run, "typed": dict(self.typed)}
        )
        print(
            f"  {self.events} events: run {run.get('run_id')} {run['state']}, adapter v{version}"
            + (f" ({'; '.join(run.get('reasons') or [])[:200]})" if run.get("reasons") else ""),
            flush=True,
        )

    def learnt_by_last(self) -> dict:
        """The checkpoint whose run made the adapter that serves at the end: the events and the text it had."""
        final = self.checkpoints[-1]["adapter_version"]
        return next(c for c in self.checkpoints if c["adapter_version"] == final)

    def _runs_after(self, run_id: int) -> bool:
        runs = self.c.request("reinf/runs", {"limit": 1})["runs"]
        return bool(runs) and runs[0]["run_id"] > run_id

    def corrections(self, tmp: Path) -> tuple[list[dict], Path]:
        out = tmp / "export.jsonl"
        self.c.request("reinf/export", {"format": "jsonl", "path": str(out)})
        rows = read_export(out)
        return [x for r in rows for x in (r.get("corrections") or [])], out


def learn(train: dict[str, str], heldout: dict[str, str], every: int, parent: str | None) -> dict:
    """The developer types `train` while the daemon learns; then every checkpoint and baseline on `heldout`."""
    with tempfile.TemporaryDirectory(dir=parent) as tmp:
        home = Path(tmp) / "home"
        # The shipped defaults but for a seed (reproducible sampling), the trainer's priority (speed only) and
        # how many events start a run.
        env = daemon_env(
            home, model_name="reinf-tiny", model_seed="0", training_min_new_completions=str(every), **BUDGET
        )
        daemon = DaemonProcess(home, env).start()
        t_loop = time.time()
        try:
            dev = Developer(daemon, every)
            counts = dev.type_files(train)
            corrections, export = dev.corrections(Path(tmp))
        finally:
            daemon.stop()
        loop_s = time.time() - t_loop
        shown = max(1, sum(c["shown"] for c in counts))
        live = {
            **figures(counts),
            "latency": summarise(dev.latencies) if dev.latencies else {},
            "corrections_stored": len(corrections),
            "corrections_per_suggestion": round(len(corrections) / shown, 3),
            "corrections_truncated": sum(bool(x["truncated"]) for x in corrections),
            "correction_examples": [x["typed"][:80] for x in corrections[:5]],
        }
        t_eval = time.time()
        suggester = Suggester()
        curve = []
        for cp in dev.checkpoints:
            v = cp["adapter_version"]
            suggester.use(v, home / "adapters" / f"v{v}" if v else None)
            fig = suggester.measure(heldout)
            curve.append({"events": cp["events"], "adapter_version": v, **fig, "run": cp["run"]})
            print(f"  held-out after {cp['events']} events (v{v}): {_line(fig)}", flush=True)
        from reinf.models import resolve_model_path

        model_path = str(resolve_model_path(suggester.cfg.model.name))
        # The loss on general held-out code against the base, measured the same way for every system (the
        # learning benchmark's measure; not the texts the trainer's gate decides on).
        texts = general_texts()
        base_loss = general_loss(model_path, None, texts)
        changes: dict[int, float] = {0: 0.0}
        for point in curve:
            v = point["adapter_version"]
            if v not in changes:
                changes[v] = loss_change_pct(
                    base_loss, general_loss(model_path, home / "adapters" / f"v{v}", texts)
                )
            point["general_loss_change_pct"] = round(changes[v], 2)
        # The baselines learn from what the final adapter's run had: the events before it started, and the files
        # as far as they had been typed then (the events after it taught no adapter of reinf's).
        learnt = dev.learnt_by_last()
        ids = set(dev.interactions[: learnt["events"]])
        rows = [r for r in read_export(export) if r.get("interaction_id") in ids]
        if len(rows) != len(ids):
            raise RuntimeError(
                f"the export has {len(rows)} of the {len(ids)} completions the baselines learn from"
            )
        seen = file_pairs(suggester, train, learnt["typed"])
        systems = {
            "sft_accepted": (accepted_pairs(rows), False),
            "fim_files_seen": (seen, False),
            "fim_files_seen_guarded": (seen, True),
        }
        baselines = {}
        for name, (pairs, guarded) in systems.items():
            folder = Path(tmp) / name
            trained = train_lora(model_path, pairs, folder, guarded=guarded)
            if "skipped" in trained:
                suggester.use(0, None)
                change = 0.0
            else:
                suggester.use(1000 + len(baselines), folder)
                change = loss_change_pct(base_loss, general_loss(model_path, folder, texts))
            fig = suggester.measure(heldout)
            baselines[name] = {
                **fig,
                "general_loss_change_pct": round(change, 2),
                "breaks_the_model": change > MAX_GENERAL_LOSS_CHANGE_PCT,
                "training": trained,
            }
            print(
                f"  held-out, baseline {name} ({len(pairs)} examples): {_line(fig)}; general loss {change:+.1f}%",
                flush=True,
            )
        base, last = curve[0], curve[-1]
        sound = {k: b for k, b in baselines.items() if not b["breaks_the_model"]}
        gain = round(100 * (last["acceptance_rate"] - base["acceptance_rate"]), 1)
        # A published run after which held-out acceptance fell by more than one standard error of the change (as
        # the learning benchmark counts them); every fall at all is reported beside it.
        published = [
            (a, b)
            for a, b in zip(curve, curve[1:], strict=False)
            if (b["run"] or {}).get("state") == "published"
        ]
        regressions = sum(
            1 for a, b in published if a["acceptance_rate"] - b["acceptance_rate"] > change_se(a, b)
        )
        falls = sum(1 for a, b in published if b["acceptance_rate"] < a["acceptance_rate"])
        return {
            "events": dev.events,
            "every": every,
            "train_files": list(train),
            "heldout_files": list(heldout),
            "live": live,
            "curve": curve,
            "baselines": {"no_learning": {k: v for k, v in base.items() if k != "run"}, **baselines},
            "baselines_learn_from": {
                "events": learnt["events"],
                "adapter_version": learnt["adapter_version"],
            },
            "gain_points": gain,
            "general_loss_base": base_loss,
            "general_loss_change_pct": last["general_loss_change_pct"],
            "accepted_chars_gain": round(
                last["accepted_chars_per_suggestion"] - base["accepted_chars_per_suggestion"], 2
            ),
            "published": sum(1 for c in curve[1:] if (c["run"] or {}).get("state") == "published"),
            "published_regressions": regressions,
            "published_falls_within_one_se": falls - regressions,
            # The targets. A baseline whose general loss rose past the bound broke the model: it is
            # reported, with its figure, and not counted as one to beat (reinf's gate would not publish it).
            "targets": {
                "gain_points": TARGET_GAIN_POINTS,
                "events": TARGET_EVENTS,
                "general_loss_change_pct": MAX_GENERAL_LOSS_CHANGE_PCT,
                "met_gain": gain >= TARGET_GAIN_POINTS and dev.events >= TARGET_EVENTS,
                "met_general_loss": last["general_loss_change_pct"] <= MAX_GENERAL_LOSS_CHANGE_PCT,
                "beats_baselines": all(
                    last["acceptance_rate"] > b["acceptance_rate"] for b in sound.values()
                ),
                "baselines_beaten": sorted(
                    k for k, b in baselines.items() if last["acceptance_rate"] > b["acceptance_rate"]
                ),
                "baselines_that_broke_the_model": sorted(set(baselines) - set(sound)),
                "no_published_regressions": regressions == 0,
            },
            "loop_s": round(loop_s, 1),
            "eval_s": round(time.time() - t_eval, 1),
        }


def change_se(a: dict, b: dict) -> float:
    """The standard error of the change in acceptance rate between two measurements, each a share of its own
    shown suggestions (binomial, taken as independent)."""
    var = sum(p * (1 - p) / max(1, n) for p, n in ((x["acceptance_rate"], x["shown"]) for x in (a, b)))
    return math.sqrt(var)


def _line(f: dict) -> str:
    return (
        f"accepted {100 * f['acceptance_rate']:.1f}% of {f['shown']} shown, partly {100 * f['partial_rate']:.1f}%, "
        f"{f['accepted_chars_per_suggestion']} accepted chars per suggestion, "
        f"{f['typed_by_hand_per_file']} chars typed by hand per file"
    )


BASELINE_LABELS = {
    "sft_accepted": "SFT on accepted",
    "fim_files_seen": "FIM fine-tune on files seen",
    "fim_files_seen_guarded": "FIM fine-tune on files seen, KL-guarded",
}


def plot(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lr = result["learning"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    xs = [p["events"] for p in lr["curve"]]
    for ax, key, label in (
        (axes[0], "acceptance_rate", "acceptance rate on held-out files (%)"),
        (axes[1], "accepted_chars_per_suggestion", "accepted characters per suggestion"),
    ):
        scale = 100 if key == "acceptance_rate" else 1
        ax.plot(xs, [scale * p[key] for p in lr["curve"]], marker="o", lw=2, label="reinf: a run every "
                f"{lr['every']} events (DPO warm start on completions)")  # fmt: skip
        for name, marker in (("sft_accepted", "s"), ("fim_files_seen", "^"), ("fim_files_seen_guarded", "v")):
            b = lr["baselines"][name]
            broke = f", general loss {b['general_loss_change_pct']:+.0f}%" if b["breaks_the_model"] else ""
            ax.scatter([xs[-1] + lr["every"] / 10], [scale * b[key]], marker=marker, s=45, zorder=3,
                       label=BASELINE_LABELS[name] + broke)  # fmt: skip
        shown = [scale * p[key] for p in lr["curve"]] + [scale * b[key] for b in lr["baselines"].values()]
        ax.set_ylim(0, max(1.0 if scale == 1 else 5.0, 1.2 * max(shown)))
        ax.set_xlabel("completion events")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"completions that learn: reinf-tiny, shipped defaults, house-style project seed {result['seed']}"
                 f"{' (quick)' if result['quick'] else ''}", fontsize=8)  # fmt: skip
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--quick", action="store_true", help="two files to learn from, one held out, fewer places"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--train-files", type=int, default=None, help="files the developer types (default 10; quick 2)"
    )
    ap.add_argument("--heldout-files", type=int, default=None, help="files measured on (default 2; quick 1)")
    ap.add_argument("--every", type=int, default=None, help="events between runs (default 100; quick 50)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "completions.json")
    ap.add_argument("--tmp", default=None, help="parent folder for the daemon's REINF_HOME")
    args = ap.parse_args()
    n_train = args.train_files or (2 if args.quick else 10)
    n_held = args.heldout_files or (1 if args.quick else 2)
    every = args.every or (50 if args.quick else 100)
    files = {k: v for k, v in generate(args.seed, n_train + n_held).items() if k != "errors.py"}
    names = list(files)
    heldout = {k: files[k] for k in names[:n_held]}
    train = {k: files[k] for k in names[n_held : n_held + n_train]}
    t0 = time.time()
    truncation = measure_truncation(heldout, limit=30 if args.quick else 10_000)
    learning = learn(train, heldout, every, args.tmp)
    result = {
        "benchmark": "completions",
        "quick": args.quick,
        "seed": args.seed,
        "command": "python " + " ".join(sys.argv).replace(str(REPO) + "/", ""),
        "files": {"train": n_train, "heldout": n_held},
        "model": "reinf-tiny (default)",
        "machine": platform.platform(),
        "wall_s": round(time.time() - t0, 1),
        "truncation": truncation,
        "developer": learning["live"],
        "learning": learning,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    png = args.out.with_suffix(".png")
    plot(result, png)
    t, d, lr = truncation, learning["live"], learning
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
        f"developer, live while learning: {_line(d)}; latency p50 {d['latency'].get('p50_ms')} ms "
        f"p95 {d['latency'].get('p95_ms')} ms; {d['corrections_stored']} corrections stored"
    )
    base, last = lr["curve"][0], lr["curve"][-1]
    print(
        f"held-out, after {lr['events']} events and {len(lr['curve']) - 1} runs ({lr['published']} published, "
        f"{lr['published_regressions']} published regressions): acceptance {100 * base['acceptance_rate']:.1f}% -> "
        f"{100 * last['acceptance_rate']:.1f}% ({lr['gain_points']:+.1f} points); accepted chars per suggestion "
        f"{base['accepted_chars_per_suggestion']} -> {last['accepted_chars_per_suggestion']}; typed by hand per file "
        f"{base['typed_by_hand_per_file']} -> {last['typed_by_hand_per_file']}; general loss "
        f"{last['general_loss_change_pct']:+.1f}%"
    )
    for name, f in lr["baselines"].items():
        broke = " (broke the model)" if f.get("breaks_the_model") else ""
        print(
            f"  baseline {name}: {_line(f)}; general loss {f.get('general_loss_change_pct', 0.0):+.1f}%{broke}"
        )
    print(f"targets: {json.dumps(lr['targets'])}")
    print(f"wrote {args.out} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
