"""The README's one table of results, made from the benchmarks' JSON in bench/results/ (never typed by hand).

    python bench/results_table.py           # print the table
    python bench/results_table.py --write   # replace the table in README.md between its two markers

A learning result enters only when it ran the shipped defaults (an empty `overrides`); a benchmark whose JSON is
missing says so in its row.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
README = REPO / "README.md"
BEGIN, END = "<!-- results table: python bench/results_table.py --write -->", "<!-- end of results table -->"


def _learning(d: dict[str, Any]) -> tuple[str, str]:
    if "overrides" not in d or d["overrides"]:
        return (
            "not yet measured with the shipped defaults",
            "≥ +40 points, ahead of both baselines, 0 regressions",
        )
    b = d["baselines"]

    def baseline(name: str, label: str) -> str:
        value = b.get(name)
        if name in d.get("baselines_not_run", []) or value is None or value != value:
            return f"{label} not run"
        paired = (d.get("baselines_paired") or {}).get(name)
        if paired and paired["users"] < d["spread"]["users"]:
            return (
                f"{label} {paired['baseline']:+.1f} on the {paired['users']} users it ran for "
                f"(reinf {paired['reinf']:+.1f} on them)"
            )
        return f"{label} {value:+.1f}"

    users = d["spread"]["users"]
    plan = d.get("plan") or {}
    seeds = plan.get("seeds") or []
    who = f"{users} user{'s' if users != 1 else ''}"
    tastes = [t for t in plan.get("tastes") or [] if t not in (d.get("left_out") or [])]
    if tastes and seeds:
        who += f" ({len(tastes)} taste{'s' if len(tastes) != 1 else ''} × seed{'s' if len(seeds) != 1 else ''} {', '.join(map(str, seeds))})"
    left = (
        f"; left out (the base never satisfies them): {', '.join(d['left_out'])}" if d.get("left_out") else ""
    )
    partial = "" if d.get("complete", True) else " (incomplete run)"
    figure = (
        f"**{d['gain_points']:+.1f} ± {d['gain_se']:.1f} points** over {who}{partial} "
        f"({100 * d['satisfaction_before']:.1f}% → {100 * d['satisfaction_after']:.1f}% satisfied); "
        f"{baseline('sft_liked', 'SFT on liked')}, {baseline('kto', 'KTO')}; general loss {d['general_loss_change_pct']:+.1f}%; "
        f"published regressions {d['published_regressions']}{left}"
    )
    t = d["targets"]
    met = all(t[k] for k in ("met_gain", "met_general_loss", "beats_baselines", "no_published_regressions"))
    return figure, "≥ +40, ahead of both baselines, loss ≤ +5%, 0 regressions: " + (
        "met" if met else "not met"
    )


def _learning_real_model(d: dict[str, Any]) -> tuple[str, str]:
    """A real model's run is one user, so its figure stands alone; reinf-tiny's target is not its target."""
    figure, _ = _learning(d)
    return f"{figure} ({d.get('plan', {}).get('model', '?')})", "reported, no target"


def _latency(d: dict[str, Any]) -> tuple[str, str]:
    return (
        f"rating ack p99 {d['rate_ack_p99_ms']:.1f} ms; completion overhead p50 {d['overhead_p50_ms']:.2f} ms",
        "≤ 10 ms; ≤ 2 ms",
    )


def _interference(d: dict[str, Any]) -> tuple[str, str]:
    return f"completion p95 while a run trains / idle: {d['p95_ratio']:.2f}", "≤ 1.5"


def _adapter_cost(d: dict[str, Any]) -> tuple[str, str]:
    r = d["ratio_to_base"]
    return f"per token with an adapter (merged, as served): {r['merged']:.2f}× the base", "~1×"


def _ppo_step(d: dict[str, Any]) -> tuple[str, str]:
    return f"{d['s_per_step']:.2f} s a step, {d['peak_gib']:.2f} GiB peak ({d['model']}, {d['device']})", "—"


def _gpu_latency(d: dict[str, Any]) -> tuple[str, str]:
    return (
        f"completion p50 {d['engine_p50_ms']:.1f} ms ({d.get('prompt_tokens')}-token prompt, {d['device']}); "
        f"HF generate {d['hf_generate_p50_ms']:.1f} ms",
        "≤ 100 ms",
    )


def _completions(d: dict[str, Any]) -> tuple[str, str]:
    raw, scoped, dev = d["truncation"]["raw"], d["truncation"]["scoped"], d["developer"]
    return (
        f"suggestions leaving the file parseable: {scoped['parseable_pct']:.1f}% truncated, "
        f"{raw['parseable_pct']:.1f}% raw; cut mid-identifier {scoped['mid_identifier_pct']:.1f}% "
        f"(raw {raw['mid_identifier_pct']:.1f}%); tokens per request {d['truncation']['tokens_per_request']['scoped']}"
        f" (raw {d['truncation']['tokens_per_request']['raw']}); simulated developer, live while reinf learns "
        f"an unseen house style: {100 * dev['acceptance_rate']:.1f}% accepted of {dev['shown']} shown",
        "mid-identifier 0%",
    )


def _completions_learning(d: dict[str, Any]) -> tuple[str, str]:
    lr = d["learning"]
    base, last, b = lr["curve"][0], lr["curve"][-1], lr["baselines"]
    runs = len(lr["curve"]) - 1
    figure = (
        f"held-out acceptance **{100 * base['acceptance_rate']:.1f}% → {100 * last['acceptance_rate']:.1f}%** "
        f"({lr['gain_points']:+.1f} points) after {lr['events']} events and {runs} runs ({lr['published']} "
        f"published, {lr['published_regressions']} published regressions), general loss "
        f"{last['general_loss_change_pct']:+.1f}%; accepted chars per suggestion {base['accepted_chars_per_suggestion']} → "
        f"{last['accepted_chars_per_suggestion']}; typed by hand per file {base['typed_by_hand_per_file']:.0f} → "
        f"{last['typed_by_hand_per_file']:.0f}; {_learn_from(lr)}: "
        + "; ".join(_completion_baseline(b[k], label) for k, label in COMPLETION_BASELINES)
    )
    t = lr["targets"]
    met = all(t[k] for k in ("met_gain", "met_general_loss", "beats_baselines", "no_published_regressions"))
    broke = t.get("baselines_that_broke_the_model") or []
    verdict = "met" if met else "not met"
    if lr["events"] < t["events"]:  # a short run cannot reach the events the target is set at
        verdict = f"not judged, a short run ({lr['events']} of {t['events']} events)"
    return figure, (
        f"≥ +{t['gain_points']:g} points after {t['events']} events, general loss ≤ +{t['general_loss_change_pct']:g}%, "
        "ahead of the baselines"
        + (" that keep general loss within it" if broke else "")
        + ", 0 regressions: "
        + verdict
    )


def _learn_from(lr: dict[str, Any]) -> str:
    """What the baselines learnt from: the events (and the text typed) before the final adapter's run."""
    src = lr.get("baselines_learn_from")
    if src is None:  # results from before the bench said so: every event
        return "baselines on the same events"
    return f"baselines on the {src['events']} events the final adapter's run had"


COMPLETION_BASELINES = (
    ("sft_accepted", "SFT on accepted"),
    ("fim_files_seen", "FIM fine-tune on files seen"),
    ("fim_files_seen_guarded", "the same with reinf's KL guard"),
)


def _completion_baseline(b: dict[str, Any], label: str) -> str:
    broke = ": breaks the model" if b["breaks_the_model"] else ""
    return (
        f"{label} {100 * b['acceptance_rate']:.1f}% (partly {100 * b['partial_rate']:.1f}%, "
        f"{b['accepted_chars_per_suggestion']} chars, general loss {b['general_loss_change_pct']:+.1f}%{broke})"
    )


def _vllm_latency(d: dict[str, Any]) -> tuple[str, str]:
    v, loc, r = d["vllm"]["latency"], d["local"]["latency"], d["ratio_vllm_over_local"]
    return (
        f"inline completion through vLLM p50 {v['p50_ms']:.0f} ms, p95 {v['p95_ms']:.0f} ms; local engine "
        f"p50 {loc['p50_ms']:.0f} ms, p95 {loc['p95_ms']:.0f} ms: {r['p50']:.2f}× / {r['p95']:.2f}× "
        f"({d['model']}, {100 * d['identical_suggestions']:.0f}% identical suggestions)",
        "—",
    )


def _cpu_engines(d: dict[str, Any]) -> tuple[str, str]:
    e = d["engines"]
    torch_part = (
        f"float32 {e['float32']['ms_per_token_p50']:.0f}, bfloat16 {e['bfloat16']['ms_per_token_p50']:.0f}"
    )
    if "llama.cpp" not in e:
        return f"ms per token, 1 thread: {torch_part}; llama.cpp not measured ({d['llama_cpp']})", "—"
    s, same = d["speedup_per_token"], d["same_text"]
    return (
        f"ms per token, 1 thread ({d['model']}, {d['prompt_tokens']}-token prompt): {torch_part}, llama.cpp "
        f"Q4_K_M {e['llama.cpp']['ms_per_token_p50']:.0f}: llama.cpp {s['llama_cpp_over_float32']:.2f}× / "
        f"{s['llama_cpp_over_bfloat16']:.2f}× faster; prompt {e['float32']['prompt_eval_ms_p50']:.0f} / "
        f"{e['bfloat16']['prompt_eval_ms_p50']:.0f} / {e['llama.cpp']['prompt_eval_ms_p50']:.0f} ms; "
        f"identical completions {100 * same['llama_cpp_vs_' + d['best_torch_dtype']]:.0f}% "
        f"(vs {d['best_torch_dtype']})",
        "—",
    )


# (what is measured, result file, figure and target from its JSON, the command where the JSON does not say)
ROWS: list[tuple[str, str, Callable[[dict[str, Any]], tuple[str, str]], str]] = [
    (
        "learning a user's taste from ratings, shipped defaults",
        "learning.json",
        _learning,
        "python bench/learning.py",
    ),
    ("the same, quick: 1 user, 50 ratings, 1 run", "quick/learning.json", _learning, "make bench QUICK=1"),
    (
        "the same on a real model, 1 user, 200 ratings",
        "learning_smollm2.json",
        _learning_real_model,
        "python bench/learning.py --model smollm2-135m-instruct --tastes commented --seeds 0",
    ),
    ("latency of the daemon", "latency.json", _latency, "python bench/latency.py"),
    ("editing while training", "interference.json", _interference, "python bench/interference.py"),
    ("cost of an active adapter", "adapter_cost.json", _adapter_cost, "python bench/adapter_cost.py"),
    ("PPO step on a GPU", "ppo_step_h100_mb8.json", _ppo_step, "python bench/ppo_step.py --gpu --steps 3"),
    ("PPO step on the CPU", "ppo_step.json", _ppo_step, "python bench/ppo_step.py"),
    ("completion latency on a GPU", "gpu_latency.json", _gpu_latency, "python bench/gpu_latency.py"),
    ("completion through vLLM, CPU", "vllm_latency.json", _vllm_latency, "python bench/vllm_latency.py"),
    ("CPU engine against llama.cpp", "cpu_engines.json", _cpu_engines, "python bench/cpu_engines.py"),
    (
        "where inline completions end, held-out code",
        "completions.json",
        _completions,
        "python bench/completions.py",
    ),
    (
        "completions that learn (simulated developer, 10 files typed, 2 held out)",
        "completions.json",
        _completions_learning,
        "python bench/completions.py",
    ),
    (
        "the same on a second house-style project (seed 1)",
        "completions_seed1.json",
        _completions_learning,
        "python bench/completions.py --seed 1",
    ),
    (
        "completions that learn, short run (simulated developer)",
        "completions_short.json",
        _completions_learning,
        "python bench/completions.py",
    ),
]


def table(results: Path = RESULTS) -> str:
    lines = ["| what | figure | target | command |", "|---|---|---|---|"]
    for label, name, make, default_command in ROWS:
        path = results / name
        if not path.exists():
            lines.append(f"| {label} | not measured | | |")
            continue
        data = json.loads(path.read_text())
        figure, target = make(data)
        command = data.get("command") or default_command
        lines.append(f"| {label} | {figure} | {target} | `{command}` → `bench/results/{name}` |")
    return "\n".join(lines) + "\n"


def with_table(readme: str, text: str) -> str:
    """`readme` with the text between the markers replaced by `text`."""
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"README.md lacks the markers {BEGIN!r} and {END!r}")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{text}{END}{tail}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true", help="rewrite the table in README.md")
    args = ap.parse_args()
    text = table()
    if args.write:
        README.write_text(with_table(README.read_text(), text))
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
