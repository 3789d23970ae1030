"""One training run, from the run folder in to `metrics.json` and `adapter/` out (see __init__ for the contract).

snapshot → reward model (lazily retrained) → chance check → imitation of the liked answers → PPO → gate →
adapter written via a temp folder.
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


class Progress:
    """Appends `{ts, phase, progress, message}` lines to progress.jsonl, and logs them."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, phase: str, fraction: float, message: str) -> None:
        lo, hi = PHASES[phase]
        event = {"ts": time.time(), "phase": phase, "progress": round(lo + (hi - lo) * min(max(fraction, 0.0), 1.0), 4),
                 "message": message}  # fmt: skip
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(event) + "\n")
        log.info("[%s %3.0f%%] %s", phase, 100 * event["progress"], message)


def read_run_config(run_dir: Path) -> tuple[Config, dict[str, Any]]:
    """The run's config.json: a `Config` and the extras the daemon adds (run_id, base_model_path, active_adapter)."""
    data = json.loads((run_dir / "config.json").read_text())
    extras = {k: data.pop(k, None) for k in ("run_id", "base_model_path", "active_adapter")}
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


def train_run(cfg: Config, extras: dict[str, Any], run_dir: Path, progress: Progress) -> dict[str, Any]:
    """Everything between the snapshot and the verdict. Returns the metrics (decision and reasons included)."""
    import torch

    from . import data, gate, imitate, ppo, reward
    from .lm import decode_responses, freeze_copy, stop_token_ids

    t_start = time.time()
    tc, rc = cfg.training, cfg.reward_model
    random.seed(tc.seed)
    torch.manual_seed(tc.seed)
    metrics: dict[str, Any] = {"run_id": extras.get("run_id"), "timings": {}}

    def reject(reason: str) -> dict[str, Any]:
        metrics.update(decision="reject", reasons=[reason])
        metrics["timings"]["total_s"] = time.time() - t_start
        return metrics

    # 1. Snapshot: rated examples and the held-out split.
    progress("snapshot", 0.0, "reading the snapshot")
    rows = data.load_snapshot(run_dir / "data.parquet")
    examples = data.examples(rows, rc.implicit_weight)
    n_explicit = sum(e.explicit for e in examples)
    metrics["data"] = {
        "interactions": len(rows),
        "rated": len(examples),
        "explicit": n_explicit,
        "off_policy": sum(
            e.adapter_version != (extras.get("active_adapter") or {}).get("version", 0) for e in examples
        ),
    }
    if n_explicit < MIN_RATINGS:
        return reject(f"too few explicit ratings to train on: {n_explicit}, need at least {MIN_RATINGS}")
    train_ex, held_ex = data.split(examples, rc.holdout_fraction)

    # 2. Models: one base; adapters for the policy (from the active one), the reward model and the gate.
    progress("load", 0.0, f"loading {extras.get('base_model_path')}")
    model, tokenizer, device = load_policy(cfg, extras)
    stop_ids = stop_token_ids(tokenizer, model)
    metrics["device"] = str(device)
    metrics["timings"]["load_s"] = time.time() - t_start

    # 3. Reward model, retrained only when enough new ratings came in.
    t0 = time.time()
    rm_progress = lambda f, m: progress("reward_model", f, m)  # noqa: E731
    rm, rm_metrics = reward.load_or_train(
        folder=cfg.home / "reward_model",
        identity=_rm_identity(cfg, extras),
        min_new_ratings=rc.min_new_ratings,
        train=train_ex,
        heldout=held_ex,
        make=lambda: _make_rm(cfg, model, tokenizer, device),
        load=lambda folder: _load_rm(cfg, folder, model, tokenizer, device),
        fit_kwargs=dict(
            epochs=rc.epochs, batch_size=rc.batch_size, learning_rate=rc.learning_rate, seed=tc.seed
        ),
        on_progress=rm_progress,
        contradiction_p=rc.contradiction_p,
    )
    metrics["reward_model"] = rm_metrics
    metrics["timings"]["reward_model_s"] = time.time() - t0
    if rm_metrics.get("contradicted"):
        c = rm_metrics["consistency"]
        return reject(
            f"the {c['n_new']} new ratings contradict the earlier ones: the reward model trained on those scores "
            f"them with correlation {c['correlation']:.3f} (p = {c['p_contradiction']:.3g}); neither the reward "
            "model nor the policy was trained on them. If your taste has changed, set "
            "reward_model.contradiction_p = 0 and train again"
        )
    corr, acc = rm_metrics["correlation"], rm_metrics["pairwise_accuracy"]
    progress("reward_model", 1.0, f"held-out correlation {corr:.3f}, pairwise accuracy {acc:.3f}")
    if rm_metrics["n_heldout"] < 2 or corr <= rc.min_holdout_correlation or acc <= 0.5:
        return reject(
            f"the reward model predicts held-out ratings no better than chance (correlation {corr:.3f}, "
            f"pairwise accuracy {acc:.3f} on {rm_metrics['n_heldout']} ratings); PPO was not run"
        )

    # 4. Warm start on the rated answers of the training split, then PPO explores from there.
    t0 = time.time()
    stop_id = stop_ids[0] if stop_ids else None
    warm = dict(
        epochs=tc.imitation_epochs, learning_rate=tc.imitation_learning_rate, batch_size=tc.minibatch_size,
        max_prompt_tokens=tc.max_prompt_tokens, max_response_tokens=tc.max_response_tokens, stop_id=stop_id,
        pad_id=_pad_id(tokenizer), seed=tc.seed,
    )  # fmt: skip
    n_liked, n_rated = len(imitate.liked(train_ex)), sum(e.explicit for e in train_ex)
    method = "kto" if tc.warm_start == "kto" and 0 < n_liked < n_rated else "imitate"  # KTO needs both kinds
    if method == "kto":
        progress("ppo", 0.0, f"KTO on the liked and disliked answers ({tc.imitation_epochs} epochs)")
        # π_ref is the policy as the run starts: the active adapter (loaded frozen for the gate), or the base.
        from_active = extras.get("active_adapter") and tc.start_from == "active"
        metrics["imitation"] = imitate.kto(
            model, tokenizer, train_ex, reference=ACTIVE if from_active else None, beta=tc.kto_beta, **warm
        )
    else:
        progress("ppo", 0.0, f"imitating the liked answers ({tc.imitation_epochs} epochs)")
        metrics["imitation"] = imitate.imitate(model, tokenizer, train_ex, **warm)
    metrics["imitation"]["method"] = method
    metrics["timings"]["imitation_s"] = time.time() - t0

    # 5. PPO on fresh rollouts from the user's prompts, mixed with general replay prompts.
    t0 = time.time()
    train_prompts, held_prompts = data.user_prompts(rows, {e.interaction_id for e in held_ex})
    replay = data.replay_prompts(tokenizer)
    prompts = train_prompts + replay
    prompt_ids = [_encode_prompt(tokenizer, p, tc.max_prompt_tokens) for p in prompts]

    # PPO's reward is the judge's score clipped to its range on the rated answers: beyond it the judge
    # extrapolates, and a policy that finds such text (an empty code block scored 4.4 on a −1..1 scale, seen
    # in the learning benchmark) would otherwise be paid for gaming it.
    # An answer under the gate's length floor scores below the lowest real answer (gate.under_floor_scores): the
    # judge overrates text that shrinks towards nothing (PPO found 3-token answers within two steps), and the
    # gate would reject it anyway.
    lo, hi = reward.score_range(rm, train_ex)
    liked_lengths = [
        len(imitate.encode(tokenizer, e, tc.max_prompt_tokens, tc.max_response_tokens, stop_id)[1])
        for e in imitate.liked(train_ex + held_ex)
    ]
    floor = gate.length_floor(liked_lengths, tc.length_floor_quantile)
    metrics["reward_model"].update(
        score_range=[lo, hi], length_floor_tokens=floor, short_score=gate.score_at_length_zero((lo, hi))
    )

    def reward_fn(ro: ppo.Rollout) -> torch.Tensor:
        texts = decode_responses(tokenizer, ro.response_ids, ro.response_mask, stop_ids)
        scores = reward.score(rm, [prompts[i] for i in ro.prompt_index], texts).clamp(lo, hi)
        return gate.under_floor_scores(scores, ro.response_mask.sum(1).cpu(), floor, (lo, hi))

    def on_step(step: int, stats: dict) -> None:
        progress("ppo", (step + 1) / tc.ppo_steps,
                 f"PPO step {step + 1}/{tc.ppo_steps}: score {stats['score']:.3f}, KL {stats['kl']:.3f}")  # fmt: skip

    # π_ref for the KL penalty: the policy as this run starts PPO (InstructGPT's SFT model), so that the penalty
    # does not pull back what imitation and earlier runs learnt; the gate bounds the KL to the active adapter,
    # and the general loss against the base.
    reference = None
    if tc.kl_reference == "start":
        reference = REFERENCE
        freeze_copy(model, POLICY, REFERENCE)
    value_head = ppo.ValueHead(_hidden_size(model)).to(device)
    args = ppo_args(cfg)
    demos = _ptx_data(cfg, model, tokenizer, train_ex, stop_id) if tc.ptx_coef > 0 else None
    progress("ppo", 0.0, f"PPO on {len(train_prompts)} user prompts and {len(replay)} replay prompts")
    history = ppo.train(
        model, value_head, prompt_ids,
        data.prompt_batches(len(train_prompts), len(replay), tc.batch_size, tc.replay_ratio, tc.seed),
        reward_fn, args, pad_id=_pad_id(tokenizer), stop_ids=stop_ids, on_step=on_step, reference=reference,
        ptx=demos.loss if demos else None,
    )  # fmt: skip
    metrics["ppo"] = _ppo_summary(history)
    metrics["timings"]["ppo_s"] = time.time() - t0

    # 6. Gate: held-out prompts (topped up with replay prompts), KL to the active adapter, general loss.
    t0 = time.time()
    progress("eval", 0.0, "comparing the candidate with the active adapter")
    gate_prompts = (held_prompts + [p for p in replay if p not in held_prompts])[: max(tc.eval_prompts, 1)]
    active = extras.get("active_adapter")
    result = gate.run_gate(
        model, tokenizer, rm,
        prompt_texts=gate_prompts,
        prompt_ids=[_encode_prompt(tokenizer, p, tc.max_prompt_tokens) for p in gate_prompts],
        candidate=POLICY, active=ACTIVE if active else None, active_version=(active or {}).get("version", 0),
        general=data.general_texts(), general_max_tokens=2 * tc.max_prompt_tokens,
        max_new_tokens=tc.max_response_tokens, temperature=tc.temperature, stop_ids=stop_ids,
        max_kl=tc.max_kl, max_general_loss_increase=tc.max_general_loss_increase, seed=tc.seed + 1,
        score_range=(lo, hi), length_floor=floor, tolerance_se=tc.gate_tolerance_se,
    )  # fmt: skip
    metrics["gate"] = result
    metrics["timings"]["eval_s"] = time.time() - t0
    progress(
        "eval", 1.0, "gate passed" if result["passed"] else "gate failed: " + "; ".join(result["reasons"])
    )
    if not result["passed"]:
        metrics.update(decision="reject", reasons=result["reasons"])
        metrics["timings"]["total_s"] = time.time() - t_start
        return metrics

    # 7. The candidate adapter, in PEFT format, via a temporary folder and a rename.
    progress("save", 0.0, "writing the adapter")
    save_adapter(model, run_dir / "adapter")
    metrics.update(decision="publish", reasons=[])
    metrics["timings"]["total_s"] = time.time() - t_start
    return metrics


# -- pieces -----------------------------------------------------------------------------------------------


def ppo_args(cfg: Config):  # noqa: ANN201
    from .ppo import PPOArgs

    t = cfg.training
    return PPOArgs(
        ppo_steps=t.ppo_steps, batch_size=t.batch_size, minibatch_size=t.minibatch_size, ppo_epochs=t.ppo_epochs,
        learning_rate=t.learning_rate, max_response_tokens=t.max_response_tokens, temperature=t.temperature,
        init_kl_coef=t.init_kl_coef, target_kl=t.target_kl, clip_range=t.clip_range,
        clip_range_value=t.clip_range_value, vf_coef=t.vf_coef, ptx_coef=t.ptx_coef, gamma=t.gamma, lam=t.lam,
        seed=t.seed,
    )  # fmt: skip


def _ptx_data(cfg: Config, model: Any, tokenizer: Any, train_ex: list, stop_id: int | None):  # noqa: ANN202
    """PPO-ptx's data (`training.ptx_data`): windows of ordinary Python, or the liked answers of the training split."""
    from .data import replay_texts
    from .imitate import Demonstrations

    tc = cfg.training
    kw = dict(batch_size=tc.minibatch_size, pad_id=_pad_id(tokenizer), seed=tc.seed)
    if tc.ptx_data == "liked":
        return Demonstrations.liked(model, tokenizer, train_ex, max_prompt_tokens=tc.max_prompt_tokens,
                                    max_response_tokens=tc.max_response_tokens, stop_id=stop_id, **kw)  # fmt: skip
    window = tc.max_prompt_tokens + tc.max_response_tokens
    return Demonstrations.texts(model, tokenizer, replay_texts(), window=window, **kw)


def load_policy(cfg: Config, extras: dict[str, Any]):  # noqa: ANN201
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
    if active and t.start_from == "active":
        model = PeftModel.from_pretrained(base, active["path"], adapter_name=POLICY, is_trainable=True)
    else:  # a fresh adapter: every run learns from all the ratings, so drift does not add up from run to run
        lora = LoraConfig(r=t.lora_r, lora_alpha=t.lora_alpha, lora_dropout=t.lora_dropout,
                          target_modules=target_modules(base))  # fmt: skip
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
    return {"name": rc.name, "base": extras.get("base_model_path") or cfg.model.name, "lora_r": rc.lora_r,
            "max_length": rc.max_length}  # fmt: skip


def _make_rm(cfg: Config, model: Any, tokenizer: Any, device: Any):  # noqa: ANN202
    from .reward import ClassifierRewardModel, PolicyRewardModel

    rc = cfg.reward_model
    if rc.name == "policy":
        return PolicyRewardModel.create(model, tokenizer, rc.lora_r, rc.max_length, target_modules(model))
    return ClassifierRewardModel.create(
        rc.name, device, rc.lora_r, rc.max_length, cfg.model.trust_remote_code
    )


def _load_rm(cfg: Config, folder: Path, model: Any, tokenizer: Any, device: Any):  # noqa: ANN202
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
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[-max_tokens:] if ids else [_pad_id(tokenizer)]


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
