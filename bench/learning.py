"""Learning benchmark: does reinf learn a user's taste from their ratings alone, and faster than the baselines?

The whole loop, as a user runs it: a real daemon (`reinf serve`) on the default model; a simulated user
(bench/rater.py, a hidden taste plus noise) asks for code through `reinf/chat` with prompts from a held-in set
and rates every answer 1–5 through `reinf/rate`. Every `--every` ratings the daemon's threshold starts a
training run (reward model → imitation of liked answers → PPO → gate) and hot-swaps the adapter it
publishes; the loop waits for the run, then measures. The taste never leaves this folder: the system sees only the stars.

Measured on held-out prompts, never rated: satisfaction = the share of answers the rater scores 4 or more,
before any rating and after every run; the loss on general held-out code (bench/baselines.py) of the final
adapter against the base; and two baselines trained offline on the same ratings, SFT on the liked answers and
TRL's KTO. Writes bench/results/learning.json and learning.png.

    python bench/learning.py            # 3 tastes × 3 seeds, 200 ratings each (hours on 2 cores)
    python bench/learning.py --quick    # 1 taste, 1 seed, 50 ratings: one run (about 12 minutes)
"""

from __future__ import annotations

import argparse
import json
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
from bench.rater import LIKED, Rater, satisfaction  # noqa: E402
from tests.daemon_proc import CACHE, DaemonProcess, daemon_env  # noqa: E402

TARGET_GAIN_POINTS = 40.0
TARGET_LOSS_CHANGE_PCT = 5.0

# The trainer's settings for these runs (REINF_TRAINING_* / REINF_REWARD_MODEL_*). The benchmark waits while a
# run trains, so the trainer may take both cores; responses are as long as the answers the user gets, and
# rollouts sample at the user's temperature. Measured on the concise taste (seed 0, one run each): the
# trainer's defaults (learning rate 1e-4, 8 steps of 8) barely move the tiny model; learning rate 2e-3 with a
# KL coefficient of 0.2 learns. Imitating the liked answers first (2 epochs, 5e-4) lifts the early curve
# (77.6% after 50 ratings against 55.2% with PPO alone). PPO-ptx on ordinary Python (coefficient 0.5) holds the
# general loss: this benchmark's general loss was +1.7% on the mean of six users with it, +4.4% on concise
# without. max_kl is raised to 40: it bounds each run's step from the active adapter (it bounded the KL to the
# base until the final runs of commented and short_docstring, seed 0, were turned away at 54.3 and 49.7 nats);
# the general-loss bound (5%) stays. The warm start is
# KTO on the liked and disliked answers (2 epochs, 5e-4): on short_docstring seed 0 it reached +82.8 points
# against +49.4 with imitation (KTO alone on the same ratings: +75.9); starting each run from the base with 3
# epochs of KTO reached +81.6, level with KTO alone (+81.6).
TRAINING = {
    "training_threads": "2",
    "training_nice": "0",
    "training_max_response_tokens": "96",
    "training_max_prompt_tokens": "64",
    "training_learning_rate": "0.002",
    "training_init_kl_coef": "0.2",
    "training_start_from": "active",
    "training_warm_start": "kto",
    "training_imitation_epochs": "2",
    "training_imitation_learning_rate": "0.0005",
    "training_max_kl": "40",
    "training_ptx_coef": "0.5",
    "training_ptx_data": "general",
    "training_temperature": "0.8",
    "training_ppo_steps": "12",
    "training_batch_size": "16",
    "training_minibatch_size": "8",
    "training_ppo_epochs": "2",
    "training_eval_prompts": "8",
    # The simulated users are honest, so a contradiction is always a false alarm here; at the trainer's 0.05
    # one stopped an honest user's run (p = 0.028 at 95% satisfaction).
    "reward_model_contradiction_p": "0.01",
}


@dataclass
class Plan:
    model: str = "reinf-tiny"
    tastes: list[str] = field(default_factory=lambda: ["concise", "short_docstring", "commented"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    ratings: int = 200
    every: int = 50  # training.min_new_ratings: a run starts at each multiple
    eval_samples: int = 2  # answers per held-out prompt at each measurement (29 prompts)
    max_tokens: int = 96
    temperature: float = 0.8  # the user's sampling temperature (model.temperature)
    baselines: bool = True
    training: dict[str, str] = field(default_factory=lambda: dict(TRAINING))

    @classmethod
    def quick(cls) -> Plan:
        """One taste, one seed, one training run: about 12 minutes on 2 idle cores."""
        return cls(tastes=["concise"], seeds=[0], ratings=50, eval_samples=1)


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
    """One simulated user from first rating to `plan.ratings`: the satisfaction curve and the runs."""
    home = work / "home"
    env = daemon_env(
        home,
        model_name=plan.model,
        model_temperature=str(plan.temperature),
        training_min_new_ratings=str(plan.every),
        training_seed=str(seed),
        model_seed=str(seed),  # the daemon's sampling: two settings compared on one seed see the same base
        **plan.training,
    )
    rater = Rater(taste, seed)
    rng = random.Random(seed)
    daemon = DaemonProcess(home, env).start()
    try:
        client = daemon.client("learning-bench")

        def ask(prompt: str) -> dict[str, Any]:
            return client.chat(prompt, max_tokens=plan.max_tokens, temperature=plan.temperature)

        def measure(n: int, run: dict[str, Any] | None, block: list[int]) -> dict[str, Any]:
            t0 = time.time()
            sat = satisfaction(rater, lambda p: ask(p)["text"], HELD_OUT, plan.eval_samples)
            point = {
                "ratings": n,
                "satisfaction": sat["satisfaction"],
                "mean_stars": sat["mean_stars"],
                "n_eval": sat["n"],
                "adapter_version": client.status()["adapter_version"],
                "liked_share_of_rated": sum(s >= LIKED for s in block) / len(block) if block else None,
                "run": run_summary(run) if n else None,
                "examples": sat["examples"],
                "eval_s": round(time.time() - t0, 1),
            }
            print(f"  {taste} seed {seed}: {n:>4} ratings, adapter v{point['adapter_version']}, "
                  f"satisfaction {100 * point['satisfaction']:.1f}%"
                  + (f" (run {point['run']['state']}: {'; '.join(point['run']['reasons'])[:160]})" if n else ""),
                  flush=True)  # fmt: skip
            return point

        curve = [measure(0, None, [])]
        order: list[str] = []
        block: list[int] = []
        t_loop = time.time()
        for i in range(1, plan.ratings + 1):
            if not order:
                order = rng.sample(HELD_IN, len(HELD_IN))
            prompt = order.pop()
            answer = ask(prompt)
            stars = rater.stars(prompt, answer["text"])
            block.append(stars)
            before = n_runs(client) if i % plan.every == 0 else 0
            client.rate(answer["interaction_id"], stars=stars)
            if i % plan.every == 0:
                run = wait_for_run(client, before, timeout=3600)
                curve.append(measure(i, run, block))
                block = []
        loop_s = time.time() - t_loop
        export = work / "ratings.jsonl"
        client.request("reinf/export", {"format": "jsonl", "path": str(export)})
        active = client.status()["adapter_version"]
        client.close()
    finally:
        daemon.stop()
    adapter = home / "adapters" / f"v{active}" if active else None
    return {"taste": taste, "seed": seed, "curve": curve, "adapter": str(adapter) if adapter else None,
            "ratings_file": str(export), "loop_s": round(loop_s, 1)}  # fmt: skip


def one_user(taste: str, seed: int, plan: Plan, work: Path, model_path: str, texts: list[str],
             base_loss: float) -> dict[str, Any]:  # fmt: skip
    """PPO through the daemon, then the baselines on the same ratings."""
    t0 = time.time()
    result = learn(taste, seed, plan, work)
    adapter = Path(result["adapter"]) if result["adapter"] else None
    loss = baselines.general_loss(model_path, adapter, texts) if adapter else base_loss
    result["general_loss"] = loss
    result["general_loss_change_pct"] = baselines.loss_change_pct(base_loss, loss)
    curve = result["curve"]
    result["satisfaction_before"] = curve[0]["satisfaction"]
    result["satisfaction_after"] = curve[-1]["satisfaction"]
    result["gain_points"] = 100 * (curve[-1]["satisfaction"] - curve[0]["satisfaction"])
    if plan.baselines:
        ratings = baselines.read_ratings(Path(result["ratings_file"]))
        rater = Rater(taste, seed)
        for name, train in (("sft_liked", baselines.train_sft_liked), ("kto", baselines.train_kto)):
            dest = work / "baselines" / name
            print(
                f"  {taste} seed {seed}: training the {name} baseline on {len(ratings)} ratings", flush=True
            )
            info = train(model_path, ratings, dest, seed=seed)
            if "skipped" not in info:
                sat = baselines.measure_adapter(
                    model_path, dest, rater, HELD_OUT, samples=plan.eval_samples,
                    max_tokens=plan.max_tokens, temperature=plan.temperature, seed=seed,
                )  # fmt: skip
                info.update(sat)
                info["gain_points"] = 100 * (sat["satisfaction"] - result["satisfaction_before"])
                info["general_loss_change_pct"] = baselines.loss_change_pct(
                    base_loss, baselines.general_loss(model_path, dest, texts)
                )
                print(f"  {taste} seed {seed}: {name} satisfaction {100 * sat['satisfaction']:.1f}% "
                      f"({info['gain_points']:+.1f} points)", flush=True)  # fmt: skip
            result.setdefault("baselines", {})[name] = info
    result["seconds"] = round(time.time() - t0, 1)
    return result


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


def summarise(users: list[dict[str, Any]], plan: Plan) -> dict[str, Any]:
    """The headline figures (means over tastes and seeds) and the same per taste."""

    def block(rows: list[dict[str, Any]]) -> dict[str, Any]:
        checkpoints = sorted({p["ratings"] for r in rows for p in r["curve"]})
        curve = {
            n: mean_spread([100 * p["satisfaction"] for r in rows for p in r["curve"] if p["ratings"] == n])
            for n in checkpoints
        }
        base = {
            name: mean_spread([r.get("baselines", {}).get(name, {}).get("gain_points") for r in rows])
            for name in ("sft_liked", "kto")
        }
        return {
            "satisfaction_before": mean_spread([100 * r["satisfaction_before"] for r in rows]),
            "satisfaction_after": mean_spread([100 * r["satisfaction_after"] for r in rows]),
            "gain_points": mean_spread([r["gain_points"] for r in rows]),
            "general_loss_change_pct": mean_spread([r["general_loss_change_pct"] for r in rows]),
            "curve_percent": {str(n): v for n, v in curve.items()},
            "baselines_gain_points": base,
        }

    overall = block(users)
    per_taste = {
        t: block([u for u in users if u["taste"] == t])
        for t in plan.tastes
        if any(u["taste"] == t for u in users)
    }
    sft = overall["baselines_gain_points"]["sft_liked"]["mean"]
    kto = overall["baselines_gain_points"]["kto"]["mean"]
    gain = overall["gain_points"]["mean"]
    return {
        # The headline fields: percentages as fractions of 1 for satisfaction, points for gains.
        "satisfaction_before": overall["satisfaction_before"]["mean"] / 100,
        "satisfaction_after": overall["satisfaction_after"]["mean"] / 100,
        "gain_points": gain,
        "ratings": plan.ratings,
        "general_loss_change_pct": overall["general_loss_change_pct"]["mean"],
        "baselines": {"no_training": 0.0, "sft_liked": sft, "kto": kto},
        "targets": {
            "gain_points": TARGET_GAIN_POINTS,
            "general_loss_change_pct": TARGET_LOSS_CHANGE_PCT,
            "met_gain": gain >= TARGET_GAIN_POINTS,
            "met_general_loss": overall["general_loss_change_pct"]["mean"] <= TARGET_LOSS_CHANGE_PCT,
            "beats_baselines": all(gain > b for b in (0.0, sft, kto) if b == b),
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
            xs, ys, yerr=sd, color=c, lw=2, capsize=3, marker="o", label=f"reinf: imitation + PPO ({taste})"
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


def write_result(users: list[dict[str, Any]], plan: Plan, base_loss: float, command: str, out: Path,
                 extra: dict[str, Any]) -> tuple[dict[str, Any], Path]:  # fmt: skip
    """learning.json (headline, spread, per taste, every user's curve) and the PNG beside it."""
    summary = summarise(users, plan)
    result = {**summary, "general_loss_base": base_loss, "plan": asdict(plan), "users": users, **extra,
              "machine": machine(), "command": command}  # fmt: skip
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
    same = ("model", "ratings", "every", "eval_samples", "max_tokens", "temperature", "baselines", "training")
    for path, part in zip(paths, parts, strict=True):
        diff = [k for k in same if part["plan"][k] != first[k]]
        if diff:
            raise SystemExit(f"{path} was run with other settings ({', '.join(diff)}) than {paths[0]}")
        if part["general_loss_base"] != parts[0]["general_loss_base"]:
            raise SystemExit(f"{path} measured the base's general loss differently from {paths[0]}")
    users = [u for part in parts for u in part["users"]]
    keys = [(u["taste"], u["seed"]) for u in users]
    if len(set(keys)) != len(keys):
        raise SystemExit(f"the same taste and seed appear twice in {', '.join(map(str, paths))}")
    plan = Plan(**{**first, "tastes": list(dict.fromkeys(u["taste"] for u in users)),
                   "seeds": sorted({u["seed"] for u in users})})  # fmt: skip
    command = (
        "; ".join(p["command"] for p in parts)
        + f"; python bench/learning.py --combine {' '.join(map(str, paths))}"
    )
    extra = {"seconds": sum(p["seconds"] for p in parts), "combined_from": [p["command"] for p in parts],
             "load_average_at_end": [p.get("load_average_at_end") for p in parts]}  # fmt: skip
    summary, png = write_result(users, plan, parts[0]["general_loss_base"], command, out, extra)
    return summary, png, extra["seconds"]


def report(summary: dict[str, Any], out: Path, png: Path, seconds: float) -> None:
    s = summary["spread"]
    print(f"\n{'':<28}{'mean':>8}{'std':>8}   target")
    print(
        f"{'satisfaction before %':<28}{s['satisfaction_before']['mean']:>8.1f}{s['satisfaction_before']['std']:>8.1f}"
    )
    for n, v in s["curve_percent"].items():
        print(f"{'  after ' + n + ' ratings %':<28}{v['mean']:>8.1f}{v['std']:>8.1f}")
    print(
        f"{'gain, PPO (points)':<28}{s['gain_points']['mean']:>8.1f}{s['gain_points']['std']:>8.1f}"
        f"   >= {TARGET_GAIN_POINTS:.0f}: {'met' if summary['targets']['met_gain'] else 'MISSED'}"
    )
    for name in ("sft_liked", "kto"):
        b = s["baselines_gain_points"][name]
        print(f"{'gain, ' + name + ' (points)':<28}{b['mean']:>8.1f}{b['std']:>8.1f}")
    g = s["general_loss_change_pct"]
    print(
        f"{'general loss change %':<28}{g['mean']:>8.1f}{g['std']:>8.1f}"
        f"   <= {TARGET_LOSS_CHANGE_PCT:.0f}: {'met' if summary['targets']['met_general_loss'] else 'MISSED'}"
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
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a trainer setting for the daemon, e.g. training_ppo_steps=16 (repeatable)")  # fmt: skip
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "learning.json"))
    ap.add_argument("--keep", help="keep the daemons' homes in this folder (default: a temporary one)")
    ap.add_argument("--combine", nargs="+", metavar="RESULT_JSON",
                    help="merge results of earlier runs (same settings, other tastes or seeds) into --out")  # fmt: skip
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
        plan.training[key.strip().lower()] = value.strip()
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
    with tempfile.TemporaryDirectory(prefix="reinf-learning-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        for taste in plan.tastes:
            for seed in plan.seeds:
                print(f"{taste}, seed {seed}", flush=True)
                work = root / f"{taste}-{seed}"
                work.mkdir(parents=True, exist_ok=True)
                users.append(one_user(taste, seed, plan, work, model_path, texts, base_loss))
                # Written after every user, so that a run stopped early keeps the users it finished.
                done = len(users) == len(plan.tastes) * len(plan.seeds)
                extra = {"seconds": round(time.time() - t0, 1), "complete": done,
                         "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}  # other work slows runs  # fmt: skip
                kept = [{k: v for k, v in u.items() if k not in ("ratings_file", "adapter")} for u in users]
                summary, png = write_result(kept, plan, base_loss, command.strip(), Path(args.out), extra)
    report(summary, Path(args.out), png, time.time() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
