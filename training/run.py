"""One training run, from the run folder in to `metrics.json` and `adapter/` out (see __init__ for the contract).

snapshot → reward model (lazily retrained, kept only when it predicts) → warm start (KTO on the ratings, DPO on
the completions) → PPO → gate → adapter written via a temp folder. Each phase is a method of `Run`, in that
order. A user who gave too few ratings for a judge but enough completion events (accepted suggestions and
corrections) gets a run on those alone: the DPO warm start and the gate, without a judge or PPO.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from reinf.config import Config
from reinf.paths import atomic_dir, write_json

log = logging.getLogger("reinf.training")

# Where each phase sits on the run's overall 0..1 progress.
PHASES = {
    "snapshot": (0.0, 0.02),
    "load": (0.02, 0.06),
    "reward_model": (0.06, 0.3),
    "ppo": (0.3, 0.85),
    "eval": (0.85, 0.97),
    "save": (0.97, 1.0),
    "done": (1.0, 1.0),
}
POLICY = "default"  # PEFT saves the adapter of this name at the folder's top level: plain PEFT format
ACTIVE = "active"
REFERENCE = "reference"
MIN_RATINGS = 8
# The completions' warm start keeps its drift on general code under this share of the gate's bound
# (training.max_general_loss_increase): the guard measures on other texts than the gate, so it leaves a margin.
GUARD_SHARE_OF_BOUND = 0.6
MIN_COMPLETION_PAIRS = 8  # completion pairs that make a run without enough ratings worth it
# The newest held-out events the gate suggests again at (each is a suggestion per adapter): the check's cost
# stays bounded as the events pile up.
MAX_HELD_CURSORS = 160


class Progress:
    """Appends `{ts, phase, progress, message}` lines to progress.jsonl, and logs them."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, phase: str, fraction: float, message: str) -> None:
        lo, hi = PHASES[phase]
        event = {
            "ts": time.time(),
            "phase": phase,
            "progress": round(lo + (hi - lo) * min(max(fraction, 0.0), 1.0), 4),
            "message": message,
        }
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(event) + "\n")
        log.info("[%s %3.0f%%] %s", phase, 100 * event["progress"], message)


def read_run_config(run_dir: Path) -> tuple[Config, dict[str, Any]]:
    """The run's config.json: a `Config` and the extras the daemon adds (run_id, base_model_path, active_adapter)."""
    data = json.loads((run_dir / "config.json").read_text())
    extras = {k: data.pop(k, None) for k in ("run_id", "base_model_path", "active_adapter", "fresh_judge")}
    return Config.from_dict(data), extras


def setup_process(cfg: Config, run_dir: Path) -> None:
    """Low priority, few threads, and the log in train.log (once, whoever started us)."""
    try:
        os.nice(cfg.training.nice)
    except OSError:
        pass
    import torch

    torch.set_num_threads(max(1, cfg.training.threads))
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(fmt)
    root.addHandler(stderr)
    log_path = run_dir / "train.log"
    if not _same_file(sys.stderr, log_path):  # the daemon already sends our stderr there
        fh = logging.FileHandler(log_path)
        fh.setFormatter(fmt)
        root.addHandler(fh)
    for noisy in ("transformers", "peft", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _same_file(stream: Any, path: Path) -> bool:
    try:
        a, b = os.fstat(stream.fileno()), os.stat(path)
    except (OSError, ValueError, AttributeError):
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def watch_parent() -> None:
    """Exit if the daemon that started us dies, so an orphaned trainer does not run on."""
    daemon = os.environ.get("REINF_DAEMON_PID")
    if not daemon:
        return
    parent = os.getppid()

    def check() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                log.error("the daemon (pid %s) is gone; stopping this run", daemon)
                os._exit(3)

    threading.Thread(target=check, name="watch-daemon", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m reinf.training RUN_DIR", file=sys.stderr)
        return 2
    run_dir = Path(args[0]).resolve()
    cfg, extras = read_run_config(run_dir)
    setup_process(cfg, run_dir)
    watch_parent()
    progress = Progress(run_dir / "progress.jsonl")
    try:
        metrics = train_run(cfg, extras, run_dir, progress)
    except Exception as exc:  # noqa: BLE001 - logged in full, and the last line says why
        log.error("%s", traceback.format_exc())
        progress("done", 1.0, f"failed: {exc}")
        log.error("run failed: %s: %s", type(exc).__name__, exc)
        return 1
    write_json(run_dir / "metrics.json", metrics)
    verdict = "publish" if metrics["decision"] == "publish" else "reject: " + "; ".join(metrics["reasons"])
    progress("done", 1.0, verdict)
    return 0


class Rejected(Exception):
    """A run that stops before publishing, with the reason in words for `reinf runs`."""


def train_run(cfg: Config, extras: dict[str, Any], run_dir: Path, progress: Progress) -> dict[str, Any]:
    """Everything between the snapshot and the verdict. Returns the metrics (decision and reasons included)."""
    import torch

    t_start = time.time()
    random.seed(cfg.training.seed)
    torch.manual_seed(cfg.training.seed)
    metrics: dict[str, Any] = {"run_id": extras.get("run_id"), "timings": {}}
    try:
        run = Run(cfg, extras, metrics)
        run.timed("snapshot", lambda: run.read_snapshot(run_dir / "data.parquet", progress))
        run.timed("load", lambda: run.load(progress))
        run.timed("reward_model", lambda: run.judge(progress))
        run.timed("imitation", lambda: run.warm_start(progress))
        run.timed("ppo", lambda: run.ppo(progress))
        result = run.timed("eval", lambda: run.gate(progress))
    except Rejected as why:
        metrics.update(decision="reject", reasons=[str(why)])
        metrics["timings"]["total_s"] = time.time() - t_start
        return metrics
    if not result["passed"]:
        metrics.update(decision="reject", reasons=result["reasons"])
    else:
        progress("save", 0.0, "writing the adapter")
        save_adapter(run.model, run_dir / "adapter")
        metrics.update(decision="publish", reasons=[])
    metrics["timings"]["total_s"] = time.time() - t_start
    return metrics


class Run:
    """The phases of one run, in order; each reads what the ones before it left on `self`."""

    def __init__(self, cfg: Config, extras: dict[str, Any], metrics: dict[str, Any]) -> None:
        self.cfg, self.extras, self.metrics = cfg, extras, metrics
        self.active = extras.get("active_adapter")
        self.rm: Any = None
        self.no_judge = ""  # why the run has no judge (it learns from completions alone), if so

    def timed(self, name: str, phase: Any) -> Any:
        t0 = time.time()
        out = phase()
        self.metrics["timings"][f"{name}_s"] = time.time() - t0
        return out

    def read_snapshot(self, path: Path, progress: Progress) -> None:
        """Rated examples and the held-out split; a run that cannot learn stops here, saying why."""
        from . import data

        progress("snapshot", 0.0, "reading the snapshot")
        self.rows = data.load_snapshot(path)
        examples = data.examples(self.rows, self.cfg.reward_model.implicit_weight)
        explicit = [e for e in examples if e.explicit]
        liked = sum(e.target > 0 for e in explicit)
        disliked = sum(e.target < 0 for e in explicit)
        self.metrics["data"] = {
            "interactions": len(self.rows),
            "rated": len(examples),
            "explicit": len(explicit),
            "liked": liked,
            "disliked": disliked,
            "off_policy": sum(e.adapter_version != (self.active or {}).get("version", 0) for e in examples),
        }
        events = data.completion_events(self.rows)
        active = self.active or {}
        watermark = active.get("event_watermark")
        split = data.split_for_run(
            events, self.cfg.reward_model.holdout_fraction, watermark, active.get("held_out_after")
        )
        self.train_events, self.held_events, new = split.train, split.held, split.new
        # The policy learns from the completions the active adapter has not, and goes over completion_replay
        # times as many earlier ones again (it learnt them in its own runs, and is the reference here), so that
        # it keeps fitting them. A bound per new one, not all of them: all would make every run longer than the
        # last, whatever the user did since.
        replayed = data.replay_sample(
            self.train_events,
            new,
            seed=f"{self.cfg.training.seed}:{self.extras.get('run_id')}",
            per_new=self.cfg.training.completion_replay,
        )
        self.learn_events = new + replayed
        self.completion_pairs = data.completion_pairs(self.learn_events)
        self.metrics["data"]["completions"] = {
            **{k: sum(e.outcome == k for e in events) for k in ("accepted", "corrected", "dismissed")},
            "held_out": len(self.held_events),
            # The next run learns the events held out here: those after this watermark (0: all of them).
            "held_out_after": watermark or 0,
            "new_to_the_active_adapter": len(new),
            "held_out_before": split.held_out_before,
            "replayed": len(replayed),
            "pairs": len(self.completion_pairs),
        }
        # Rejected here, the run used none of the ratings: the daemon's count towards the next run stays.
        self.metrics["used_ratings"] = False
        why = ""
        if len(explicit) < MIN_RATINGS:
            why = f"too few ratings to train on: {len(explicit)}, need at least {MIN_RATINGS}"
        elif liked == 0 or disliked == 0:
            why = _one_sided(len(explicit), liked, disliked)
        fresh = len(data.completion_pairs(new))
        if why and fresh < MIN_COMPLETION_PAIRS:
            raise Rejected(
                f"{why}; and too few completions to learn from without them: {fresh} accepted or corrected "
                f"suggestions new since the active adapter, need at least {MIN_COMPLETION_PAIRS}"
            )
        if why:
            self.no_judge = (
                f"no judge: {why}; this run learnt from {len(self.completion_pairs)} completions alone"
            )
            self.train_ex, self.held_ex = examples, []
            return
        self.metrics["used_ratings"] = True
        self.train_ex, self.held_ex = data.split(examples, self.cfg.reward_model.holdout_fraction)

    def load(self, progress: Progress) -> None:
        """One base; adapters for the policy (from the active one), the reward model and the gate."""
        from . import hparams
        from .lm import stop_token_ids

        progress("load", 0.0, f"loading {self.extras.get('base_model_path')}")
        self.model, self.tokenizer, self.device = load_policy(self.cfg, self.extras)
        self.stop_ids = stop_token_ids(self.tokenizer, self.model)
        self.stop_id = self.stop_ids[0] if self.stop_ids else None
        self.rates = hparams.learning_rates(self.cfg.training, _hidden_size(self.model))
        self.metrics["device"] = str(self.device)
        self.metrics["learning_rates"] = self.rates.as_metrics()

    def judge(self, progress: Progress) -> None:
        """The reward model, retrained only when enough new ratings came in, and kept only when it predicts."""
        from . import data, reward

        cfg, rc = self.cfg, self.cfg.reward_model
        if self.no_judge:
            self.metrics["reward_model"] = {"skipped": self.no_judge}
            progress("reward_model", 1.0, self.no_judge)
            return
        self.rm, rm_metrics = reward.load_or_train(
            folder=cfg.home / "reward_model",
            identity=_rm_identity(cfg, self.extras),
            min_new_ratings=rc.min_new_ratings,
            train=self.train_ex,
            heldout=self.held_ex,
            make=lambda: _make_rm(cfg, self.model, self.tokenizer, self.device),
            load=lambda folder: _load_rm(cfg, folder, self.model, self.tokenizer, self.device),
            fit_kwargs=dict(
                epochs=rc.epochs,
                batch_size=rc.batch_size,
                learning_rate=rc.learning_rate,
                seed=cfg.training.seed,
                text_pairs=data.judge_pairs(self.train_events),
            ),
            on_progress=lambda f, m: progress("reward_model", f, m),
            contradiction_p=rc.contradiction_p,
            min_correlation=rc.min_holdout_correlation,
            fresh=bool(self.extras.get("fresh_judge")),
        )
        self.metrics["reward_model"] = rm_metrics
        if rm_metrics.get("contradicted"):
            c = rm_metrics["consistency"]
            raise Rejected(
                f"your {c['n_new']} newest ratings contradict the earlier ones: the judge trained on those scores "
                f"them with correlation {c['correlation']:.3f} (p = {c['p_contradiction']:.3g}); nothing was "
                "trained on them. If your taste has changed, train with a fresh judge: `reinf train "
                '--fresh-judge`, `%reinf retrain --fresh-judge` in Jupyter, or "reinf: Retrain with a Fresh '
                "Judge\" in VS Code's command palette"
            )
        check = rm_metrics["check"]
        progress("reward_model", 1.0, f"the judge is {check['note']}")
        if not check["passed"]:
            raise Rejected(f"the reward model is {check['note']}; it was not kept, and PPO was not run")

    def warm_start(self, progress: Progress) -> None:
        """KTO on the liked and disliked answers of the training split, then DPO on the completion pairs (and,
        with training.fim_finetune, a next-token fine-tune on what the user took or wrote); π_ref is the active
        adapter, which the policy equals as the run starts."""
        from . import data, imitate

        tc = self.cfg.training
        kw = dict(
            epochs=tc.warm_start_epochs,
            learning_rate=self.rates.warm_start,
            batch_size=tc.minibatch_size,
            max_prompt_tokens=tc.max_prompt_tokens,
            max_response_tokens=tc.max_response_tokens,
            pad_id=_pad_id(self.tokenizer),
            seed=tc.seed,
        )
        reference = ACTIVE if self.active else None
        if not self.no_judge:
            progress("ppo", 0.0, f"KTO on the liked and disliked answers ({tc.warm_start_epochs} epochs)")
            self.metrics["imitation"] = imitate.kto(
                self.model,
                self.tokenizer,
                self.train_ex,
                reference=reference,
                beta=tc.kto_beta,
                stop_id=self.stop_id,
                **kw,
            )
            self.metrics["imitation"]["method"] = "kto"
        kw.update(epochs=tc.completion_epochs, learning_rate=self.rates.completions)
        progress(
            "ppo", 0.0, f"DPO on {len(self.completion_pairs)} completions ({tc.completion_epochs} epochs)"
        )
        guard = (
            completion_guard(self.cfg, self.model, self.tokenizer)
            if tc.dpo_general_kl_coef > 0 and self.completion_pairs
            else None
        )
        self.metrics["completions"] = {
            "dpo": imitate.dpo(
                self.model,
                self.tokenizer,
                self.completion_pairs,
                reference=reference,
                beta=tc.dpo_beta,
                nll_coef=tc.dpo_nll_coef,
                general=guard,
                stop_id=self.stop_id,
                **kw,
            )
        }
        if tc.fim_finetune:
            self.metrics["completions"]["fim_finetune"] = imitate.fim_finetune(
                self.model,
                self.tokenizer,
                data.wanted_texts(self.learn_events),
                stop_id=self.stop_id,
                general=guard,
                **kw,
            )

    def ppo(self, progress: Progress) -> None:
        """PPO on fresh rollouts from the user's prompts (chats, and the FIM prompts of their completions), mixed
        with general replay prompts."""
        import torch

        from . import data, gate, imitate, ppo, reward
        from .lm import decode_responses, freeze_copy

        tc, tok = self.cfg.training, self.tokenizer
        held_ids = {e.interaction_id for e in [*self.held_ex, *self.held_events]}
        train_prompts, self.held_prompts = data.user_prompts(self.rows, held_ids)
        self.replay = data.replay_prompts(tok)
        self.score_range, self.floor = None, 0.0
        if self.no_judge:
            self.metrics["ppo"] = {"skipped": f"{self.no_judge}: PPO needs a judge"}
            return
        prompts = train_prompts + self.replay
        prompt_ids = [_encode_prompt(tok, p, tc.max_prompt_tokens) for p in prompts]

        # PPO's reward is the judge's score clipped to its range on the rated answers: beyond it the judge
        # extrapolates, and a policy that finds such text (an empty code block scored 4.4 on a −1..1 scale) would
        # be paid for gaming it. An answer under the gate's length floor scores below the lowest real answer
        # (gate.under_floor_scores): the judge overrates text that shrinks towards nothing.
        self.score_range = lo, hi = reward.score_range(self.rm, self.train_ex)
        liked_lengths = [
            len(imitate.encode(tok, e, tc.max_prompt_tokens, tc.max_response_tokens, self.stop_id)[1])
            for e in imitate.liked(self.train_ex + self.held_ex)
        ]
        self.floor = floor = gate.length_floor(liked_lengths, tc.length_floor_quantile)
        self.metrics["reward_model"].update(
            score_range=[lo, hi], length_floor_tokens=floor, short_score=gate.score_at_length_zero((lo, hi))
        )

        def reward_fn(ro: ppo.Rollout) -> torch.Tensor:
            texts = decode_responses(tok, ro.response_ids, ro.response_mask, self.stop_ids)
            scores = reward.score(self.rm, [prompts[i] for i in ro.prompt_index], texts).clamp(lo, hi)
            return gate.under_floor_scores(scores, ro.response_mask.sum(1).cpu(), floor, (lo, hi))

        def on_step(step: int, stats: dict) -> None:
            progress(
                "ppo",
                (step + 1) / tc.ppo_steps,
                f"PPO step {step + 1}/{tc.ppo_steps}: score {stats['score']:.3f}, KL {stats['kl']:.3f}",
            )

        # π_ref for the KL penalty: the policy as this run starts PPO (InstructGPT's SFT model), so that the
        # penalty does not pull back what the warm start and earlier runs learnt; the gate bounds the KL to the
        # active adapter, and the general loss against the base.
        freeze_copy(self.model, POLICY, REFERENCE)
        value_head = ppo.ValueHead(_hidden_size(self.model)).to(self.device)
        demos = _ptx_data(self.cfg, self.model, tok) if tc.ptx_coef > 0 else None
        progress(
            "ppo", 0.0, f"PPO on {len(train_prompts)} user prompts and {len(self.replay)} replay prompts"
        )
        history = ppo.train(
            self.model,
            value_head,
            prompt_ids,
            data.prompt_batches(
                len(train_prompts), len(self.replay), tc.batch_size, tc.replay_ratio, tc.seed
            ),
            reward_fn,
            ppo_args(self.cfg, self.rates.ppo),
            pad_id=_pad_id(tok),
            stop_ids=self.stop_ids,
            on_step=on_step,
            reference=REFERENCE,
            ptx=demos.loss if demos else None,
        )
        self.metrics["ppo"] = _ppo_summary(history)
        fim = {e.prompt for e in self.train_events}
        self.metrics["ppo"]["prompts"] = {
            "user": len(train_prompts),
            "of_completions": sum(p in fim for p in train_prompts),
            "replay": len(self.replay),
        }

    def gate(self, progress: Progress) -> dict[str, Any]:
        """Held-out prompts (topped up with replay prompts) and ratings, KL to the active adapter, general loss."""
        from . import data, gate

        tc, tok = self.cfg.training, self.tokenizer
        progress("eval", 0.0, "comparing the candidate with the active adapter")
        held = self.held_prompts
        prompts = (held + [p for p in self.replay if p not in held])[: max(tc.eval_prompts, 1)]
        spec = gate.GateSpec(
            prompt_texts=prompts,
            prompt_ids=[_encode_prompt(tok, p, tc.max_prompt_tokens) for p in prompts],
            rated=self.held_ex,
            candidate=POLICY,
            active=ACTIVE if self.active else None,
            active_version=(self.active or {}).get("version", 0),
            general=data.general_texts(),
            general_max_tokens=2 * tc.max_prompt_tokens,
            max_new_tokens=tc.max_response_tokens,
            max_prompt_tokens=tc.max_prompt_tokens,
            temperature=tc.temperature,
            stop_ids=self.stop_ids,
            completions=data.wanted_texts(self.held_events),
            cursors=held_cursors(self.cfg, tok, self.held_events)[-MAX_HELD_CURSORS:],
            suggest_temperature=self.cfg.model.temperature,
            suggest_max_tokens=self.cfg.model.max_new_tokens,
            suggest_stop_texts=_completion_stops(self.cfg, tok),
            no_judge=self.no_judge,
            max_kl=tc.max_kl,
            max_general_loss_increase=tc.max_general_loss_increase,
            seed=tc.seed + 1,
            score_range=self.score_range,
            length_floor=self.floor,
            tolerance_se=tc.gate_tolerance_se,
        )
        result = gate.run_gate(self.model, tok, self.rm, spec)
        self.metrics["gate"] = result
        self.metrics["checks"] = result["summary"]
        progress(
            "eval", 1.0, "gate passed" if result["passed"] else "gate failed: " + "; ".join(result["reasons"])
        )
        return result


# -- pieces -----------------------------------------------------------------------------------------------


def _one_sided(n: int, liked: int, disliked: int) -> str:
    """Why ratings of one kind only cannot train, and what the user can do about it."""
    if liked == 0 and disliked == 0:
        told = f"none of the {n} rated answers was liked or disliked (all got 3 stars)"
    else:
        told = f"all {n} rated answers were {'liked' if disliked == 0 else 'disliked'}"
    want = "like (4–5 stars or thumbs up)" if liked == 0 else "dislike (1–2 stars or thumbs down)"
    if liked == 0 and disliked == 0:
        want = "like and some you dislike"
    return f"{told}: there is nothing to tell good answers from bad ones yet; rate some answers you {want}"


def ppo_args(cfg: Config, learning_rate: float):
    """PPO's hyperparameters: every `PPOArgs` field that `[training]` has, by name, and the run's rate."""
    from dataclasses import fields

    from .ppo import PPOArgs

    t = cfg.training
    shared = {f.name: getattr(t, f.name) for f in fields(PPOArgs) if hasattr(t, f.name)}
    return PPOArgs(**{**shared, "learning_rate": learning_rate})


def held_cursors(cfg: Config, tokenizer: Any, events: Any) -> list[Any]:
    """The gate's cursors of the events that say all the user had there, oldest first, each with the scope the
    daemon cut its suggestion by (the prefix and suffix read back from its FIM prompt, the language's limits, the
    single-line mode where the daemon made a line suggestion)."""
    from reinf.truncate import Limits, Scope

    from .gate import HeldCursor

    template, out = _fim_template(cfg, tokenizer), []
    for e in sorted(events, key=lambda e: e.event_id):
        parts = template.split(e.prompt) if e.written else None
        if parts is None:
            continue
        max_lines, max_chars = cfg.completions.limits_for(e.language)
        limits = Limits(max_lines, max_chars, cfg.completions.multiline and e.mode != "line")
        out.append(HeldCursor(e.prompt, Scope(parts[0], parts[1], e.language, limits), e.written))
    return out


def _fim_template(cfg: Config, tokenizer: Any):
    from reinf.fim import get_template, tokenizer_vocab

    return get_template(cfg.model.fim_template, tokenizer_vocab(tokenizer), cfg.model.name)


def _completion_stops(cfg: Config, tokenizer: Any) -> list[str]:
    """The texts that end a completion in the daemon (engine.complete): the template's stops and the EOS."""
    return [*_fim_template(cfg, tokenizer).stop, tokenizer.eos_token or ""]


def completion_guard(cfg: Config, model: Any, tokenizer: Any):
    """The completions' term on general code: the KL to the base on `_ptx_data`, at training.dpo_general_kl_coef,
    its weight raised while the drift is over GUARD_SHARE_OF_BOUND of the gate's bound."""
    from .imitate import GeneralGuard

    tc = cfg.training
    return GeneralGuard(
        _ptx_data(cfg, model, tokenizer),
        tc.dpo_general_kl_coef,
        target=GUARD_SHARE_OF_BOUND * tc.max_general_loss_increase,
    )


def _ptx_data(cfg: Config, model: Any, tokenizer: Any):
    """Windows of ordinary Python: PPO-ptx's data, and what the completions' DPO keeps close to the base."""
    from .data import replay_texts
    from .imitate import Demonstrations

    tc = cfg.training
    window = tc.max_prompt_tokens + tc.max_response_tokens
    return Demonstrations.texts(
        model,
        tokenizer,
        replay_texts(),
        window=window,
        batch_size=tc.minibatch_size,
        pad_id=_pad_id(tokenizer),
        seed=tc.seed,
    )


def load_policy(cfg: Config, extras: dict[str, Any]):
    """The base on the device (bf16 on CUDA) with the policy adapter, and the active adapter for the gate."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    from reinf.engine import load_causal_lm, load_tokenizer, pick_device

    path = extras.get("base_model_path") or cfg.model.name
    device = pick_device(cfg.model.device)
    trust = cfg.model.trust_remote_code
    tokenizer = load_tokenizer(cfg.model.tokenizer or path, trust_remote_code=trust)
    base = load_causal_lm(path, device, cfg.model.dtype, trust_remote_code=trust)
    base.config.use_cache = False
    device = torch.device(device)
    active = extras.get("active_adapter")
    t = cfg.training
    if active:  # each run is one step from what serves now
        model = PeftModel.from_pretrained(base, active["path"], adapter_name=POLICY, is_trainable=True)
    else:
        lora = LoraConfig(
            r=t.lora_r,
            lora_alpha=t.lora_alpha,
            lora_dropout=t.lora_dropout,
            target_modules=target_modules(base),
        )
        model = get_peft_model(base, lora, adapter_name=POLICY)
    if active:
        model.load_adapter(active["path"], adapter_name=ACTIVE, is_trainable=False)
    model.set_adapter(POLICY)
    return model, tokenizer, device


def target_modules(model: Any) -> Any:
    """LoRA on the attention projections where they have the usual names, else on every linear layer."""
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    wanted = ["q_proj", "k_proj", "v_proj", "o_proj"]
    return wanted if set(wanted) <= names else "all-linear"


def save_adapter(model: Any, dest: Path) -> None:
    """Write the policy adapter to `dest` through a temporary folder, so it is whole or absent."""
    with atomic_dir(dest) as tmp:
        model.save_pretrained(str(tmp), selected_adapters=[POLICY])


def _rm_identity(cfg: Config, extras: dict[str, Any]) -> dict[str, Any]:
    rc = cfg.reward_model
    return {
        "name": rc.name,
        "base": extras.get("base_model_path") or cfg.model.name,
        "lora_r": rc.lora_r,
        "max_length": rc.max_length,
    }


def _make_rm(cfg: Config, model: Any, tokenizer: Any, device: Any):
    from .reward import ClassifierRewardModel, PolicyRewardModel

    rc = cfg.reward_model
    if rc.name == "policy":
        return PolicyRewardModel.create(model, tokenizer, rc.lora_r, rc.max_length, target_modules(model))
    return ClassifierRewardModel.create(
        rc.name, device, rc.lora_r, rc.max_length, cfg.model.trust_remote_code
    )


def _load_rm(cfg: Config, folder: Path, model: Any, tokenizer: Any, device: Any):
    from .reward import ClassifierRewardModel, PolicyRewardModel

    rc = cfg.reward_model
    if rc.name == "policy":
        return PolicyRewardModel.load(folder, model, tokenizer, rc.max_length)
    return ClassifierRewardModel.load(folder, rc.name, device, rc.max_length, cfg.model.trust_remote_code)


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _hidden_size(model: Any) -> int:
    from .lm import causal_lm

    return causal_lm(model).config.hidden_size


def _encode_prompt(tokenizer: Any, text: str, max_tokens: int) -> list[int]:
    """The prompt's last `max_tokens` tokens, exactly as the daemon fed it to the model."""
    from reinf.fim import encode_prompt

    ids = encode_prompt(tokenizer, text, keep_last=max_tokens)
    return ids if ids else [_pad_id(tokenizer)]


def _ppo_summary(history: list[dict]) -> dict[str, Any]:
    k = max(1, min(2, len(history) // 2))
    first, last = history[:k], history[-k:]

    def mean(rows: list[dict], key: str) -> float:
        return sum(r[key] for r in rows) / len(rows)

    return {
        "steps": len(history),
        "score_first": mean(first, "score"),
        "score_last": mean(last, "score"),
        "kl_last": mean(last, "kl"),
        "beta_last": history[-1]["beta"],
        "step_time_s": mean(history, "time_s"),
        "history": history,
    }
