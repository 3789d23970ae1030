"""Learning benchmark: does reinf, as shipped, learn a user's taste from their ratings alone?

The whole loop, as a user runs it: a real daemon (`reinf serve`) on the default model with the shipped
defaults; a simulated user (bench/rater.py, a hidden taste plus noise) asks for code through `reinf/chat`, with
prompts from a held-in set, and rates every answer 1–5 through `reinf/rate`. Every `--every` ratings the
daemon's threshold starts a training run (reward model → KTO warm start → PPO → gate) and hot-swaps the adapter
it publishes; the loop waits for the run, and notes which adapter serves.

Then every system is measured the same way, offline, through reinf's Engine with the shipped chat settings and
the same generation seeds (bench/baselines.py `answers`): the base, reinf's adapter at every checkpoint, and two
baselines trained on the same ratings (SFT on the liked answers, TRL's KTO). Satisfaction = the share of answers
to held-out prompts (never rated) that the rater scores 4 or more, with its standard error over prompts. Also:
the loss on general held-out code against the base, and published regressions (a run after which satisfaction
fell by more than one standard error). A taste the base never satisfies is reported and left out of the means.

Only budget knobs that change speed, not what is learned, are set here (BUDGET, and `--every`); anything else
must be passed with `--set`, and is printed beside every figure and stored under `overrides`.
Writes bench/results/learning.json and learning.png.

    python bench/learning.py            # 5 tastes × 3 seeds, 200 ratings each (many hours on 2 cores)
    python bench/learning.py --quick    # 1 taste, 1 seed, 50 ratings: one run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import baselines  # noqa: E402
from bench.prompts import HELD_IN, HELD_OUT  # noqa: E402
from bench.rater import LIKED, TASTES, Rater  # noqa: E402
from tests.daemon_proc import CACHE, DaemonProcess, daemon_env  # noqa: E402

TARGET_GAIN_POINTS = 40.0
TARGET_LOSS_CHANGE_PCT = 5.0

# Speed only: the benchmark waits while a run trains, so the trainer runs at normal priority (on one thread, as
# shipped: two threads on two busy cores were several times slower).
BUDGET = {"training_nice": "0"}
# What a benchmark may set without it counting as an override: it changes how fast, not what is learned.
BUDGET_KEYS = {"training_threads", "training_nice", "training_min_new_ratings", "model_seed"}


@dataclass
class Plan:
    model: str = "reinf-tiny"
    tastes: list[str] = field(default_factory=lambda: list(TASTES))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    ratings: int = 200
    every: int = 50  # training.min_new_ratings: a run starts at each multiple
    eval_samples: int = 9  # answers per held-out prompt at each measurement, each with its own seed
    baselines: bool = True
    overrides: dict[str, str] = field(default_factory=dict)  # REINF_* settings beyond the defaults

    @classmethod
    def quick(cls) -> Plan:
        """One taste, one seed, one training run."""
        return cls(tastes=["concise"], seeds=[0], ratings=50, eval_samples=3)


def wait_for_run(client: Any, runs_before: int, timeout: float) -> dict[str, Any] | None:
    """Wait until the run the threshold started is over; its row from `reinf/runs` (None if none started)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.status()
        runs = client.request("reinf/runs", {"limit": 1})["runs"]
        if status["training"]["state"] == "idle" and runs and runs[0]["run_id"] > runs_before:
            return runs[0]
        if status["training"]["state"] == "idle" and len(runs) == 0:
            return None
        time.sleep(1.0)
    raise TimeoutError(f"the training run did not finish within {timeout:.0f} s")


def n_runs(client: Any) -> int:
    runs = client.request("reinf/runs", {"limit": 1})["runs"]
    return runs[0]["run_id"] if runs else 0


def run_summary(run: dict[str, Any] | None) -> dict[str, Any]:
    """What a run did, in a few numbers: its state, why, reward-model fit, PPO's score moving, the gate."""
    if run is None:
        return {"state": "none started"}
    m = run.get("metrics") or {}
    ppo = {k: v for k, v in (m.get("ppo") or {}).items() if k != "history"}
    rm = m.get("reward_model") or {}
    gate = m.get("gate") or {}
    return {
        "run_id": run["run_id"],
        "state": run["state"],
        "reasons": m.get("reasons") or ([run["error"]] if run.get("error") else []),
        "checks": m.get("checks"),
        "adapter_version": run.get("adapter_version"),
        "rm_correlation": rm.get("correlation"),
        "rm_pairwise_accuracy": rm.get("pairwise_accuracy"),
        "ppo": ppo,
        "ppo_history": [
            {k: round(h[k], 4) for k in ("score", "kl", "response_tokens") if k in h}
            for h in (m.get("ppo") or {}).get("history", [])
        ],
        "gate": {
            k: gate.get(k)
            for k in (
                "candidate_score",
                "active_score",
                "kl_to_active",
                "kl_to_base",
                "general_loss_increase",
            )
        },
        "timings": m.get("timings"),
    }


def learn(taste: str, seed: int, plan: Plan, work: Path) -> dict[str, Any]:
    """One simulated user from first rating to `plan.ratings`: which adapter served at every checkpoint."""
    home = work / "home"
    env = daemon_env(
        home,
        model_name=plan.model,
        training_min_new_ratings=str(plan.every),
        training_seed=str(seed),
        model_seed=str(seed),  # the daemon's sampling: two settings compared on one seed see the same base
        **BUDGET,
        **plan.overrides,
    )
    rater = Rater(taste, seed)
    rng = random.Random(seed)
    daemon = DaemonProcess(home, env).start()
    try:
        client = daemon.client("learning-bench")
        checkpoints = [{"ratings": 0, "adapter_version": 0, "run": None}]
        order: list[str] = []
        block: list[int] = []
        t_loop = time.time()
        for i in range(1, plan.ratings + 1):
            if not order:
                order = rng.sample(HELD_IN, len(HELD_IN))
            prompt = order.pop()
            answer = client.chat(prompt)  # the shipped chat settings: no max_tokens, no temperature
            stars = rater.stars(prompt, answer["text"])
            block.append(stars)
            before = n_runs(client) if i % plan.every == 0 else 0
            client.rate(answer["interaction_id"], stars=stars)
            if i % plan.every == 0:
                run = run_summary(wait_for_run(client, before, timeout=3600))
                version = client.status()["adapter_version"]
                checkpoints.append(
                    {
                        "ratings": i,
                        "adapter_version": version,
                        "run": run,
                        "liked_share_of_rated": sum(s >= LIKED for s in block) / len(block),
                    }
                )
                why = "; ".join(run.get("reasons") or [])[:160]
                print(
                    f"  {taste} seed {seed}: {i:>4} ratings, adapter v{version} (run {run['state']}"
                    f"{': ' + why if why else ''})",
                    flush=True,
                )
                block = []
        loop_s = time.time() - t_loop
        export = work / "ratings.jsonl"
        client.request("reinf/export", {"format": "jsonl", "path": str(export)})
        client.close()
    finally:
        daemon.stop()
    return {
        "taste": taste,
        "seed": seed,
        "checkpoints": checkpoints,
        "adapters": str(home / "adapters"),
        "ratings_file": str(export),
        "loop_s": round(loop_s, 1),
    }


class Answers:
    """Every system's answers to the held-out prompts, generated once per adapter folder (the base's once for
    the whole benchmark) and judged by each user's rater."""

    def __init__(self, model_path: str, samples: int) -> None:
        self.model_path, self.samples, self.cache = model_path, samples, {}

    def judged(self, adapter: Path | None, rater: Rater) -> dict[str, Any]:
        key = str(adapter) if adapter else "base"
        if key not in self.cache:
            self.cache[key] = baselines.answers(self.model_path, adapter, HELD_OUT, self.samples)
        return baselines.judged(rater, HELD_OUT, self.cache[key])


def paired_gain(after: dict[str, Any], before: dict[str, Any]) -> dict[str, float]:
    """Gain in points with its standard error, paired by prompt (both measured on the same prompts and seeds)."""
    diffs = [a - b for a, b in zip(after["per_prompt"], before["per_prompt"], strict=True)]
    return {"points": 100 * sum(diffs) / len(diffs), "se": 100 * baselines.standard_error(diffs)}


def one_user(
    taste: str,
    seed: int,
    plan: Plan,
    work: Path,
    model_path: str,
    texts: list[str],
    base_loss: float,
    answers: Answers,
) -> dict[str, Any]:
    """PPO through the daemon, then every system measured the same way on the same ratings."""
    t0 = time.time()
    result = learn(taste, seed, plan, work)
    rater = Rater(taste, seed)
    base = answers.judged(None, rater)
    curve = []
    for point in result.pop("checkpoints"):
        v = point["adapter_version"]
        adapter = Path(result["adapters"]) / f"v{v}" if v else None
        sat = answers.judged(adapter, rater)
        curve.append(
            {
                **point,
                "satisfaction": sat["satisfaction"],
                "se": sat["se"],
                "n_eval": sat["n"],
                "per_prompt": sat["per_prompt"],
                "examples": sat["examples"],
            }
        )
    result["curve"] = curve
    # A published run after which satisfaction fell by more than one standard error of the (paired) change.
    result["published_regressions"] = []
    for prev, point in zip(curve, curve[1:], strict=False):
        change = paired_gain(point, prev)
        point["change_points"] = change
        if point["run"] and point["run"]["state"] == "published" and change["points"] < -change["se"]:
            result["published_regressions"].append(point["ratings"])
    final_v = curve[-1]["adapter_version"]
    adapter = Path(result["adapters"]) / f"v{final_v}" if final_v else None
    result["general_loss"] = baselines.general_loss(model_path, adapter, texts) if adapter else base_loss
    result["general_loss_change_pct"] = baselines.loss_change_pct(base_loss, result["general_loss"])
    result["satisfaction_before"], result["satisfaction_after"] = (
        base["satisfaction"],
        curve[-1]["satisfaction"],
    )
    result["gain"] = paired_gain(curve[-1], base)
    result["gain_points"] = result["gain"]["points"]
    if plan.baselines:
        ratings = baselines.read_ratings(Path(result["ratings_file"]))
        for name, train in (("sft_liked", baselines.train_sft_liked), ("kto", baselines.train_kto)):
            dest = work / "baselines" / name
            print(
                f"  {taste} seed {seed}: training the {name} baseline on {len(ratings)} ratings", flush=True
            )
            info = train(model_path, ratings, dest, seed=seed)
            if "skipped" not in info:
                sat = answers.judged(dest, rater)
                info.update({k: sat[k] for k in ("satisfaction", "se", "n")}, gain=paired_gain(sat, base))
                info["gain_points"] = info["gain"]["points"]
                info["general_loss_change_pct"] = baselines.loss_change_pct(
                    base_loss, baselines.general_loss(model_path, dest, texts)
                )
                info["breaks_the_model"] = info["general_loss_change_pct"] > TARGET_LOSS_CHANGE_PCT
                print(
                    f"  {taste} seed {seed}: {name} satisfaction {100 * sat['satisfaction']:.1f}% "
                    f"({info['gain_points']:+.1f} ± {info['gain']['se']:.1f} points)",
                    flush=True,
                )
            result.setdefault("baselines", {})[name] = info
    print(
        f"  {taste} seed {seed}: reinf {100 * base['satisfaction']:.1f}% → {100 * curve[-1]['satisfaction']:.1f}% "
        f"({result['gain_points']:+.1f} ± {result['gain']['se']:.1f} points), published regressions: "
        f"{len(result['published_regressions'])}{overrides_note(plan)}",
        flush=True,
    )
    result["seconds"] = round(time.time() - t0, 1)
    return result


def overrides_note(plan: Plan) -> str:
    """Printed beside every figure when the run was not the shipped defaults."""
    if not plan.overrides:
        return ""
    return " [overrides: " + ", ".join(f"{k}={v}" for k, v in sorted(plan.overrides.items())) + "]"


def mean_spread(values: list[float]) -> dict[str, float]:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def base_ever_satisfies(curve: list[dict[str, Any]]) -> bool:
    """Whether the base pleases a taste at all: the share of its held-out answers that pleased, or of the answers
    it wrote for the first ratings that were liked, more than two standard errors above zero. One pleasing answer
    in 189 is the rater's noise, not a taste the base sometimes meets."""
    base = curve[0]
    if base["satisfaction"] > 2 * base["se"]:
        return True
    first = curve[1] if len(curve) > 1 else {}
    share, n = first.get("liked_share_of_rated"), first.get("ratings") or 0
    return bool(share) and n > 0 and share > 2 * math.sqrt(share * (1 - share) / n)


def summarise(users: list[dict[str, Any]], plan: Plan) -> dict[str, Any]:
    """The headline figures (means over the users whose taste the base satisfies at least sometimes) and the same
    per taste."""

    def mean_se(rows: list[dict[str, Any]]) -> float:
        return math.sqrt(sum(r["se"] ** 2 for r in rows)) / len(rows) if rows else float("nan")

    def block(rows: list[dict[str, Any]]) -> dict[str, Any]:
        checkpoints = sorted({p["ratings"] for r in rows for p in r["curve"]})
        curve = {
            n: mean_spread([100 * p["satisfaction"] for r in rows for p in r["curve"] if p["ratings"] == n])
            for n in checkpoints
        }
        base = {}
        for name in ("sft_liked", "kto"):
            got = [r["baselines"][name] for r in rows if "gain" in r.get("baselines", {}).get(name, {})]
            base[name] = {
                **mean_spread([g["gain_points"] for g in got]),
                "se": mean_se([g["gain"] for g in got]),
                "broke_the_model": sum(g.get("breaks_the_model", False) for g in got),
            }
        return {
            "users": len(rows),
            "satisfaction_before": mean_spread([100 * r["satisfaction_before"] for r in rows]),
            "satisfaction_after": mean_spread([100 * r["satisfaction_after"] for r in rows]),
            "gain_points": {
                **mean_spread([r["gain_points"] for r in rows]),
                "se": mean_se([r["gain"] for r in rows]),
            },
            "general_loss_change_pct": mean_spread([r["general_loss_change_pct"] for r in rows]),
            "published_regressions": sum(len(r["published_regressions"]) for r in rows),
            "curve_percent": {str(n): v for n, v in curve.items()},
            "baselines_gain_points": base,
        }

    # Decided per taste, here only, from every user's curve (results stored before the rule follow it too).
    satisfied = {u["taste"] for u in users if base_ever_satisfies(u["curve"])}
    for u in users:
        u["base_ever_satisfies"] = u["taste"] in satisfied
    counted = [u for u in users if u["base_ever_satisfies"]]
    overall = block(counted)
    per_taste = {}
    for t in plan.tastes:
        rows = [u for u in users if u["taste"] == t]
        if rows:
            per_taste[t] = {**block(rows), "base_ever_satisfies": t in satisfied}
    sft = overall["baselines_gain_points"]["sft_liked"]["mean"]
    kto = overall["baselines_gain_points"]["kto"]["mean"]
    gain = overall["gain_points"]["mean"]
    # Each baseline against reinf on the users it ran for (KTO needs TRL, which earlier runs lacked).
    paired = {}
    for name in ("sft_liked", "kto"):
        ran = [u for u in counted if "gain_points" in ((u.get("baselines") or {}).get(name) or {})]
        paired[name] = {
            "users": len(ran),
            "baseline": statistics.fmean(u["baselines"][name]["gain_points"] for u in ran) if ran else None,
            "reinf": statistics.fmean(u["gain_points"] for u in ran) if ran else None,
        }
    regressions = sum(len(u["published_regressions"]) for u in users)
    return {
        # The headline: percentages as fractions of 1 for satisfaction, points for gains.
        "satisfaction_before": overall["satisfaction_before"]["mean"] / 100,
        "satisfaction_after": overall["satisfaction_after"]["mean"] / 100,
        "gain_points": gain,
        "gain_se": overall["gain_points"]["se"],
        "ratings": plan.ratings,
        "general_loss_change_pct": overall["general_loss_change_pct"]["mean"],
        "published_regressions": regressions,
        "baselines": {"no_training": 0.0, "sft_liked": sft, "kto": kto},
        "baselines_not_run": sorted(name for name, p in paired.items() if not p["users"]),
        "baselines_paired": paired,
        "overrides": dict(plan.overrides),
        "left_out": sorted({u["taste"] for u in users} - satisfied),
        "targets": {
            "gain_points": TARGET_GAIN_POINTS,
            "general_loss_change_pct": TARGET_LOSS_CHANGE_PCT,
            "met_gain": gain >= TARGET_GAIN_POINTS,
            "met_general_loss": overall["general_loss_change_pct"]["mean"] <= TARGET_LOSS_CHANGE_PCT,
            # A baseline that was not run (TRL missing, say) is not beaten: the claim needs both measured, and
            # each is compared on the users it ran for.
            "beats_baselines": gain > 0.0
            and all(p["users"] and p["reinf"] > p["baseline"] for p in paired.values()),
            "no_published_regressions": regressions == 0,
        },
        "spread": overall,
        "per_taste": per_taste,
    }


def plot(users: list[dict[str, Any]], summary: dict[str, Any], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tastes = list(summary["per_taste"])
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, taste in enumerate(tastes):
        c = colours[k % len(colours)]
        for u in (u for u in users if u["taste"] == taste):
            xs = [p["ratings"] for p in u["curve"]]
            ax.plot(xs, [100 * p["satisfaction"] for p in u["curve"]], color=c, alpha=0.25, lw=1)
        curve = summary["per_taste"][taste]["curve_percent"]
        xs = [int(n) for n in curve]
        ys = [v["mean"] for v in curve.values()]
        sd = [v["std"] for v in curve.values()]
        ax.errorbar(
            xs,
            ys,
            yerr=sd,
            color=c,
            lw=2,
            capsize=3,
            marker="o",
            label=f"reinf: KTO warm start + PPO ({taste})",
        )
        x_end = xs[-1]
        for name, marker in (("sft_liked", "s"), ("kto", "^")):
            g = summary["per_taste"][taste]["baselines_gain_points"][name]["mean"]
            if g == g:
                ax.scatter([x_end + 6], [ys[0] + g], color=c, marker=marker, s=40, zorder=3)
    ax.scatter([], [], color="gray", marker="s", label="SFT on liked (same ratings)")
    ax.scatter([], [], color="gray", marker="^", label="KTO, TRL (same ratings)")
    ax.set_xlabel("ratings given")
    ax.set_ylabel("satisfaction on held-out prompts (% rated ≥ 4)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title(
        "\n".join(line for part in title.split("\n") for line in textwrap.wrap(part, 150)), fontsize=6
    )
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def machine() -> str:
    return f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, CPU only".replace(
        "  ", " "
    )


def write_result(
    users: list[dict[str, Any]], plan: Plan, base_loss: float, command: str, out: Path, extra: dict[str, Any]
) -> tuple[dict[str, Any], Path]:
    """learning.json (headline, spread, per taste, every user's curve) and the PNG beside it."""
    summary = summarise(users, plan)
    result = {
        **summary,
        "general_loss_base": base_loss,
        "plan": asdict(plan),
        "users": users,
        **extra,
        "machine": machine(),
        "command": command,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    png = out.with_suffix(".png")
    plot(users, summary, png, f"{command}\n{machine()}")
    return summary, png


def combine(paths: list[Path], out: Path) -> tuple[dict[str, Any], Path, float]:
    """One result from several runs of this script with the same plan (but other tastes or seeds), e.g. runs
    made side by side on a machine with cores to spare. Refuses results whose settings differ."""
    parts = [json.loads(p.read_text()) for p in paths]
    first = parts[0]["plan"]
    same = ("model", "ratings", "every", "eval_samples", "baselines", "overrides")
    for path, part in zip(paths, parts, strict=True):
        diff = [k for k in same if part["plan"][k] != first[k]]
        if diff:
            raise SystemExit(f"{path} was run with other settings ({', '.join(diff)}) than {paths[0]}")
        # the same code and data on another machine can differ in the last digits (float summation order)
        if not math.isclose(part["general_loss_base"], parts[0]["general_loss_base"], rel_tol=1e-5):
            raise SystemExit(f"{path} measured the base's general loss differently from {paths[0]}")
    users = [u for part in parts for u in part["users"]]
    keys = [(u["taste"], u["seed"]) for u in users]
    if len(set(keys)) != len(keys):
        raise SystemExit(f"the same taste and seed appear twice in {', '.join(map(str, paths))}")
    plan = Plan(
        **{
            **first,
            "tastes": list(dict.fromkeys(u["taste"] for u in users)),
            "seeds": sorted({u["seed"] for u in users}),
        }
    )
    command = (
        "; ".join(p["command"] for p in parts)
        + f"; python bench/learning.py --combine {' '.join(map(str, paths))}"
    )
    extra = {
        "seconds": sum(p["seconds"] for p in parts),
        # Every taste with every seed: a part's users are each whole (a run stopped early keeps those it finished).
        "complete": set(keys) == {(t, s) for t in plan.tastes for s in plan.seeds},
        "combined_from": [p["command"] for p in parts],
        "load_average_at_end": [p.get("load_average_at_end") for p in parts],
    }
    summary, png = write_result(users, plan, parts[0]["general_loss_base"], command, out, extra)
    return summary, png, extra["seconds"]


def report(summary: dict[str, Any], out: Path, png: Path, seconds: float) -> None:
    s = summary["spread"]
    note = ""
    if summary["overrides"]:
        note = (
            "   [overrides: " + ", ".join(f"{k}={v}" for k, v in sorted(summary["overrides"].items())) + "]"
        )
    print(
        f"\n{s['users']} users"
        + (
            f"; left out, the base never satisfies: {', '.join(summary['left_out'])}"
            if summary["left_out"]
            else ""
        )
        + note
    )
    print(f"{'':<30}{'mean':>8}{'± se':>8}{'std':>8}   target")
    b0 = s["satisfaction_before"]
    print(f"{'satisfaction before %':<30}{b0['mean']:>8.1f}{'':>8}{b0['std']:>8.1f}")
    for n, v in s["curve_percent"].items():
        print(f"{'  after ' + n + ' ratings %':<30}{v['mean']:>8.1f}{'':>8}{v['std']:>8.1f}")
    g = s["gain_points"]
    print(
        f"{'gain, reinf (points)':<30}{g['mean']:>8.1f}{g['se']:>8.1f}{g['std']:>8.1f}"
        f"   >= {TARGET_GAIN_POINTS:.0f}: {'met' if summary['targets']['met_gain'] else 'MISSED'}{note}"
    )
    for name in ("sft_liked", "kto"):
        b = s["baselines_gain_points"][name]
        broke = f"   broke the model for {b['broke_the_model']} users" if b.get("broke_the_model") else ""
        print(f"{'gain, ' + name + ' (points)':<30}{b['mean']:>8.1f}{b['se']:>8.1f}{b['std']:>8.1f}{broke}")
    loss = s["general_loss_change_pct"]
    print(
        f"{'general loss change %':<30}{loss['mean']:>8.1f}{'':>8}{loss['std']:>8.1f}"
        f"   <= {TARGET_LOSS_CHANGE_PCT:.0f}: {'met' if summary['targets']['met_general_loss'] else 'MISSED'}"
    )
    print(
        f"{'published regressions':<30}{summary['published_regressions']:>8}{'':>16}   0: "
        f"{'met' if summary['targets']['no_published_regressions'] else 'MISSED'}"
    )
    print(f"wrote {out} and {png} in {seconds / 60:.1f} min")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one taste, one seed, 50 ratings (QUICK=1 too)")
    ap.add_argument("--tastes", help="comma-separated tastes (bench/rater.py)")
    ap.add_argument("--seeds", help="comma-separated seeds")
    ap.add_argument("--ratings", type=int)
    ap.add_argument("--every", type=int, help="ratings per training run (training.min_new_ratings)")
    ap.add_argument("--eval-samples", type=int)
    ap.add_argument("--model", help="model name or folder (default reinf-tiny)")
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an experiment: a setting other than the defaults, e.g. training_ppo_steps=16 (repeatable; "
        "stored under overrides and printed beside every figure)",
    )
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "learning.json"))
    ap.add_argument("--keep", help="keep the daemons' homes in this folder (default: a temporary one)")
    ap.add_argument(
        "--combine",
        nargs="+",
        metavar="RESULT_JSON",
        help="merge results of earlier runs (same settings, other tastes or seeds) into --out",
    )
    args = ap.parse_args()
    if args.combine:
        summary, png, seconds = combine([Path(p) for p in args.combine], Path(args.out))
        report(summary, Path(args.out), png, seconds)
        return 0
    if os.environ.get("QUICK") == "1":
        args.quick = True

    plan = Plan.quick() if args.quick else Plan()
    if args.tastes:
        plan.tastes = args.tastes.split(",")
    if args.seeds:
        plan.seeds = [int(s) for s in args.seeds.split(",")]
    for name in ("ratings", "every", "eval_samples", "model"):
        if getattr(args, name) is not None:
            setattr(plan, name, getattr(args, name))
    plan.baselines = not args.no_baselines
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--set wants KEY=VALUE, got {item!r}")
        key = key.strip().lower()
        if key in BUDGET_KEYS:
            ap.error(f"{key} is a budget knob the benchmark sets itself (--every for min_new_ratings)")
        plan.overrides[key] = value.strip()
    for taste in plan.tastes:
        Rater(taste)  # an unknown taste stops here, before any daemon starts

    os.environ["REINF_CACHE"] = str(CACHE)
    from reinf.models import resolve_model_path

    model_path = resolve_model_path(plan.model)
    texts = baselines.general_texts()
    base_loss = baselines.general_loss(model_path, None, texts)
    command = "python bench/learning.py " + " ".join(sys.argv[1:])
    t0 = time.time()
    users = []
    answers = Answers(model_path, plan.eval_samples)
    with tempfile.TemporaryDirectory(prefix="reinf-learning-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        for taste in plan.tastes:
            for seed in plan.seeds:
                print(f"{taste}, seed {seed}", flush=True)
                work = root / f"{taste}-{seed}"
                work.mkdir(parents=True, exist_ok=True)
                users.append(one_user(taste, seed, plan, work, model_path, texts, base_loss, answers))
                # Written after every user, so that a run stopped early keeps the users it finished.
                done = len(users) == len(plan.tastes) * len(plan.seeds)
                extra = {
                    "seconds": round(time.time() - t0, 1),
                    "complete": done,
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
                }  # other work slows runs
                kept = [{k: v for k, v in u.items() if k not in ("ratings_file", "adapters")} for u in users]
                summary, png = write_result(kept, plan, base_loss, command.strip(), Path(args.out), extra)
    report(summary, Path(args.out), png, time.time() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
