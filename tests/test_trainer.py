"""The trainer without the daemon: PPO learns, a run publishes or is rejected for the right reason, kill -9 is safe."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from reinf.config import Config
from reinf.paths import write_json
from reinf.store import Store
from reinf.training import reward
from reinf.training.data import Example
from reinf.training.run import Progress, read_run_config, train_run
from tests.trainer_fixtures import FAST_TRAINING, fill_home, tiny_model

LORA = ["q_proj", "k_proj", "v_proj", "o_proj"]


@pytest.fixture(autouse=True)
def one_thread():
    # As the trainer runs (training.threads = 1): on a busy 2-core machine, more threads are far slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- PPO itself ------------------------------------------------------------------------------------------


def _toy_policy(vocab: int = 64):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.1, pad_token_id=0,
        eos_token_id=1, bos_token_id=2,
    )  # fmt: skip
    return get_peft_model(LlamaForCausalLM(cfg), LoraConfig(r=8, lora_alpha=16, target_modules=LORA))


def _run_toy_ppo(
    learning_rate: float, model=None, ptx=None, ptx_coef: float = 0.0, steps: int = 16
) -> list[dict]:
    from reinf.training.ppo import PPOArgs, ValueHead, train

    model = model if model is not None else _toy_policy()
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 64) for _ in range(rng.randrange(3, 9))] for _ in range(32)]

    def batches():
        r = random.Random(1)
        while True:
            yield [r.randrange(len(prompts)) for _ in range(16)]

    def low_tokens(ro) -> torch.Tensor:  # the scripted reward: the share of tokens with an id under 32
        mask = ro.response_mask.float()
        return ((ro.response_ids < 32).float() * mask).sum(1) / mask.sum(1)

    args = PPOArgs(ppo_steps=steps, batch_size=16, minibatch_size=8, ppo_epochs=4, learning_rate=learning_rate,
                   max_response_tokens=16, init_kl_coef=0.05, ptx_coef=ptx_coef)  # fmt: skip
    return train(model, ValueHead(64), prompts, batches(), low_tokens, args, pad_id=0, stop_ids=[1], ptx=ptx)


def test_ppo_raises_a_scripted_reward():
    history = _run_toy_ppo(1e-2)
    first = sum(h["score"] for h in history[:4]) / 4
    last = sum(h["score"] for h in history[-4:]) / 4
    assert first < 0.6, history[:4]  # a random policy picks low ids about half the time
    assert last > first + 0.15, [round(h["score"], 3) for h in history]
    assert history[-1]["kl"] > 0  # it moved away from the reference to get there


def test_ppo_with_no_learning_rate_stays_put():
    # The control for the test above: the same run with the updates switched off does not improve.
    history = _run_toy_ppo(0.0)
    first = sum(h["score"] for h in history[:4]) / 4
    last = sum(h["score"] for h in history[-4:]) / 4
    assert abs(last - first) < 0.1
    assert all(abs(h["kl"]) < 1e-4 for h in history)


# -- whole runs on the test-preset model ------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return tiny_model()


def _config(home: Path, **overrides: dict) -> Config:
    data = Config(home=home).to_dict()
    for section, values in FAST_TRAINING.items():
        data[section].update(values)
    for section, values in overrides.items():
        data[section].update(values)
    return Config.from_dict(data)


def _prepare_run(cfg: Config, store: Store, model_dir: Path, active: dict | None = None) -> Path:
    """What the scheduler does before it starts the trainer."""
    run_id = store.create_run("manual", store.ratings_total(), store.max_rating_id())
    run_dir = cfg.home / "runs" / str(run_id)
    run_dir.mkdir(parents=True)
    store.export_snapshot(run_dir / "data.parquet")
    write_json(run_dir / "config.json",
               {**cfg.to_dict(), "run_id": run_id, "base_model_path": str(model_dir), "active_adapter": active})  # fmt: skip
    return run_dir


def _train(run_dir: Path) -> dict:
    cfg, extras = read_run_config(run_dir)
    return train_run(cfg, extras, run_dir, Progress(run_dir / "progress.jsonl"))


def _home(tmp_path: Path, model_dir: Path, n: int = 64, **kw) -> tuple[Config, Store]:
    cfg = _config(tmp_path / "home", **kw.pop("overrides", {}))
    cfg.home.mkdir()
    store = Store(cfg.home / "reinf.duckdb")
    fill_home(store, model_dir, n, **kw)
    return cfg, store


def test_a_run_learns_the_raters_taste_and_publishes(tmp_path, model_dir):
    from safetensors.torch import load_file

    cfg, store = _home(tmp_path, model_dir)
    run_dir = _prepare_run(cfg, store, model_dir)
    metrics = _train(run_dir)
    rm, gate = metrics["reward_model"], metrics["gate"]
    assert rm["retrained"] and rm["n_heldout"] >= 4
    assert rm["correlation"] > 0.15 and rm["pairwise_accuracy"] > 0.55, rm
    assert metrics["ppo"]["steps"] == 6
    assert metrics["decision"] == "publish", metrics["reasons"]
    assert gate["candidate_score"] > gate["active_score"] and gate["kl_to_base"] <= cfg.training.max_kl
    lo, hi = rm["score_range"]  # PPO's reward and the gate's scores are clipped to the judge's range
    assert lo < hi and lo <= gate["active_score"] <= hi and lo <= gate["candidate_score"] <= hi
    assert rm["short_score"] == pytest.approx(lo - (hi - lo))  # under the length floor: worse than any answer
    assert gate["checks"]["length_ok"] and gate["candidate_median_tokens"] >= gate["length_floor_tokens"] > 0
    # The adapter is plain PEFT, and PPO really moved its weights (LoRA B starts at zero).
    adapter = run_dir / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "LORA"
    weights = load_file(adapter / "adapter_model.safetensors")
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and max(float(v.abs().max()) for v in lora_b) > 1e-4
    assert not (run_dir / ".adapter.tmp").exists()
    phases = [json.loads(line)["phase"] for line in (run_dir / "progress.jsonl").read_text().splitlines()]
    assert phases[0] == "snapshot" and {"reward_model", "ppo", "eval", "save"} <= set(phases)

    # A second run starts from the published adapter, compares with it, and reuses the reward model.
    store.add_adapter(1, 1, str(adapter), "active", {})
    run2 = _prepare_run(cfg, store, model_dir, active={"version": 1, "path": str(adapter)})
    metrics2 = _train(run2)
    assert metrics2["reward_model"]["retrained"] is False
    assert metrics2["gate"]["compared_with"] == 1
    store.close()


def test_a_judge_no_better_than_chance_stops_the_run_before_ppo(tmp_path, model_dir):
    # Every interaction has the same prompt and answer, rated at random: nothing to learn, by construction.
    cfg, store = _home(
        tmp_path, model_dir, n=40, same_text=True, overrides={"reward_model": {"holdout_fraction": 0.4}}
    )
    run_dir = _prepare_run(cfg, store, model_dir)
    metrics = _train(run_dir)
    assert metrics["decision"] == "reject"
    assert metrics["reward_model"]["check"]["tested"] and "no better than chance" in metrics["reasons"][0]
    assert "ppo" not in metrics and not (run_dir / "adapter").exists()
    assert not (cfg.home / "reward_model").exists()  # a judge that failed is never kept
    store.close()


def test_a_rejected_judge_is_not_reused_and_honest_ratings_then_publish(tmp_path, model_dir):
    """As the Jupyter walk went: the first ratings tell the judge nothing, so that run is rejected; the user
    then rates honestly, and the next run trains a fresh judge and publishes (it is not stopped as
    "contradicting" a judge that was never any good)."""
    cfg, store = _home(
        tmp_path, model_dir, n=40, same_text=True, overrides={"reward_model": {"holdout_fraction": 0.4}}
    )
    first = _train(_prepare_run(cfg, store, model_dir))
    assert first["decision"] == "reject" and "no better than chance" in first["reasons"][0], first["reasons"]
    assert not (cfg.home / "reward_model").exists()
    fill_home(store, model_dir, 64, seed=1)
    second = _train(_prepare_run(cfg, store, model_dir))
    assert second["reward_model"]["retrained"] and "consistency" not in second["reward_model"]
    assert second["decision"] == "publish", second["reasons"]
    assert (cfg.home / "reward_model" / "meta.json").exists()
    store.close()


def test_ratings_of_one_kind_only_say_so_and_train_nothing(tmp_path, model_dir):
    cfg, store = _home(tmp_path, model_dir, n=12, rate=lambda text: 5)
    metrics = _train(_prepare_run(cfg, store, model_dir))
    assert metrics["decision"] == "reject" and "all 12 rated answers were liked" in metrics["reasons"][0]
    assert "rate some answers you dislike" in metrics["reasons"][0] and "reward_model" not in metrics
    store.close()


def test_the_gate_rejects_an_adapter_pushed_too_far_from_the_base(tmp_path, model_dir):
    cfg, store = _home(tmp_path, model_dir, overrides={"training": {"learning_rate": 0.05, "max_kl": 0.5}})
    run_dir = _prepare_run(cfg, store, model_dir)
    metrics = _train(run_dir)
    assert metrics["decision"] == "reject"
    assert metrics["gate"]["checks"]["kl_within_bound"] is False
    assert any("KL to the base" in r and "training.max_kl" in r for r in metrics["reasons"])
    assert not (run_dir / "adapter").exists()
    store.close()


def test_too_few_ratings_is_a_rejection_not_a_crash(tmp_path, model_dir):
    cfg, store = _home(tmp_path, model_dir, n=3)
    metrics = _train(_prepare_run(cfg, store, model_dir))
    assert metrics["decision"] == "reject" and "too few ratings" in metrics["reasons"][0]
    store.close()


def test_the_reward_model_is_retrained_only_after_enough_new_ratings(tmp_path):
    calls = []

    class Judge:
        def __init__(self, tag):
            self.tag = tag

    def examples(n, start=0):
        return [
            Example(str(i), "p", "r", 1.0 if i % 2 else -1.0, 1.0, True, i + 1, 0)
            for i in range(start, start + n)
        ]

    def run(train, held):
        return reward.load_or_train(
            folder=tmp_path / "rm", identity={"name": "policy", "base": "b"}, min_new_ratings=5,
            train=train, heldout=held, make=lambda: Judge("new"), load=lambda folder: Judge("loaded"),
            fit_kwargs={}, on_progress=None,
        )  # fmt: skip

    # A stand-in judge: fit, evaluate and save are replaced so that only the bookkeeping runs.
    orig = reward.fit, reward.evaluate, reward.RewardModel
    reward.fit = lambda rm, ex, on_progress=None, **kw: calls.append(len(ex)) or {"train_loss": 0.0}
    reward.evaluate = lambda rm, held: {"n_heldout": len(held), "correlation": 1.0, "pairwise_accuracy": 1.0}
    Judge.save = lambda self, folder: (folder / "saved").write_text(self.tag)
    try:
        rm, m = run(examples(10), examples(4, 10))
        assert m["retrained"] and rm.tag == "new" and m["watermark"] == 14
        rm, m = run(examples(14), examples(4, 14))  # 4 new ratings: under the threshold of 5
        assert not m["retrained"] and rm.tag == "loaded" and m["n_heldout"] == 4
        rm, m = run(examples(15), examples(4, 15))  # 5 new
        assert m["retrained"] and m["watermark"] == 19
        assert calls == [10, 15]
    finally:
        reward.fit, reward.evaluate, _ = orig


def test_the_permutation_p_value_is_small_only_for_a_real_negative_correlation():
    x = [float(i) for i in range(20)]
    assert reward.permutation_p(x, [-v for v in x]) == pytest.approx(1 / 2001)  # no shuffle is as low
    assert reward.permutation_p(x, x) == 1.0
    rng = random.Random(3)
    noise = [rng.random() for _ in x]
    assert 0.05 < reward.permutation_p(x, noise) < 0.95
    assert reward.permutation_p([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]) == 1.0  # a constant judge
    assert reward.permutation_p([1.0, 2.0], [2.0, 1.0]) == 1.0  # too few to tell


def test_new_ratings_that_contradict_the_earlier_ones_train_nothing(tmp_path, monkeypatch):
    """The judge saved from the earlier ratings scores the new ones; inverted new ratings stop the run before
    anything is trained or saved, while ratings that agree retrain it as usual."""

    class Judge:
        def __init__(self, tag):
            self.tag, self.closed = tag, False

        def save(self, folder):
            (folder / "saved").write_text(self.tag)

        def close(self):
            self.closed = True

    def ex(i, response, target):
        return Example(str(i), f"prompt {i}", response, target, 1.0, True, i + 1, 0)

    def history(start, n, invert=False):  # the user likes "good" answers, or says the opposite
        sign = -1.0 if invert else 1.0
        return [
            ex(i, "good" if i % 2 else "bad", sign * (1.0 if i % 2 else -1.0))
            for i in range(start, start + n)
        ]

    fitted = []
    monkeypatch.setattr(reward, "fit", lambda rm, ex, on_progress=None, **kw: fitted.append(len(ex)) or {})
    monkeypatch.setattr(reward, "evaluate", lambda rm, held: {"n_heldout": len(held), "correlation": 0.9,
                                                               "pairwise_accuracy": 0.9})  # fmt: skip
    monkeypatch.setattr(
        reward, "score", lambda rm, p, r: torch.tensor([1.0 if x == "good" else -1.0 for x in r])
    )
    loaded = []

    def run(examples):
        return reward.load_or_train(
            folder=tmp_path / "rm", identity={"name": "policy"}, min_new_ratings=5, train=examples[:-4],
            heldout=examples[-4:], make=lambda: Judge("new"), load=lambda f: loaded.append(Judge("old")) or loaded[-1],
            fit_kwargs={}, contradiction_p=0.01,
        )  # fmt: skip

    _, m = run(history(0, 20))
    assert m["retrained"] and "consistency" not in m  # no earlier judge: nothing to contradict
    _, m = run(history(0, 20) + history(20, 20, invert=True))
    assert m["contradicted"] and not m["retrained"] and fitted == [16], m
    assert m["consistency"]["n_new"] == 20 and m["consistency"]["correlation"] == pytest.approx(-1.0)
    assert (tmp_path / "rm" / "saved").read_text() == "new" and json_watermark(tmp_path / "rm") == 20
    _, m = run(history(0, 20) + history(20, 20))
    assert m["retrained"] and m["contradicted"] is False and m["consistency"]["correlation"] > 0.9
    assert loaded[-1].closed, "the earlier judge must leave the shared base before a new one is made"
    # A user whose taste really changed asks for a fresh judge: it is trained on everything, unchecked.
    _, m = reward.load_or_train(
        folder=tmp_path / "rm",
        identity={"name": "policy"},
        min_new_ratings=5,
        train=history(20, 20, invert=True),
        heldout=history(40, 4, invert=True),
        make=lambda: Judge("fresh"),
        load=lambda f: Judge("old"),
        fit_kwargs={},
        contradiction_p=0.01,
        fresh=True,
    )
    assert m["retrained"] and "consistency" not in m and m["reason"] == "a fresh judge was asked for"
    assert (tmp_path / "rm" / "saved").read_text() == "fresh"


def json_watermark(folder: Path) -> int:
    return json.loads((folder / "meta.json").read_text())["watermark"]


def test_kill_9_of_the_trainer_leaves_no_adapter(tmp_path, model_dir):
    cfg, store = _home(tmp_path, model_dir, overrides={"training": {"ppo_steps": 200}})
    run_dir = _prepare_run(cfg, store, model_dir)
    proc = subprocess.Popen(
        [sys.executable, "-m", "reinf.training", str(run_dir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            progress = (
                (run_dir / "progress.jsonl").read_text() if (run_dir / "progress.jsonl").exists() else ""
            )
            if '"phase": "ppo"' in progress and "PPO step 2/" in progress:
                break
            assert proc.poll() is None, (run_dir / "train.log").read_text()
            time.sleep(0.2)
        else:
            pytest.fail("the trainer never reached PPO")
        os.killpg(proc.pid, signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not (run_dir / "adapter").exists() and not (run_dir / "metrics.json").exists()
    assert "PPO step" in (run_dir / "train.log").read_text()  # it logged there, as the daemon will read it
    store.close()


def test_sampling_with_the_adapter_merged_matches_it_and_restores_the_base():
    from reinf.training.lm import merged_adapter, pad_left, sample

    model = _toy_policy()
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    q, qm = pad_left([[5, 6, 7], [8, 9, 10, 11, 12]], 0)
    kw = dict(max_new_tokens=12, temperature=0.0, stop_ids=[1], pad_id=0)
    plain = sample(model, q, qm, **kw)
    with model.disable_adapter():
        base = sample(model, q, qm, **kw)
    with merged_adapter(model):
        merged = sample(model, q, qm, **kw)
    assert torch.equal(plain[0], merged[0]) and not torch.equal(plain[0], base[0])
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # bit for bit
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {n for n in before if "lora_" in n}


class _CharTokenizer:
    """Characters to ids 3..62 of the toy policy's vocabulary (0 pad, 1 stop)."""

    pad_token_id, eos_token_id = 0, 1

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [3 + ord(c) % 60 for c in text]}


def test_the_gates_kl_is_measured_from_the_adapter_it_names():
    """The KL bound is a step from the active adapter: a candidate equal to it is 0 from it, not from the base."""
    from reinf.training.gate import kl_to
    from reinf.training.lm import freeze_copy

    model = _toy_policy()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.5)  # the active adapter: far from the base
    freeze_copy(model, "default", "active")
    ids = torch.randint(3, 64, (4, 12))
    batches = [(ids, torch.ones_like(ids), 6, torch.ones(4, 6))]
    assert kl_to(model, batches) > 0.1  # from the base
    assert kl_to(model, batches, "active") == pytest.approx(0.0, abs=1e-5)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n and ".default." in n:
                p.add_(torch.randn_like(p) * 0.05)  # a small step from it
    assert 0 < kl_to(model, batches, "active") < kl_to(model, batches)
    assert model.active_adapter == "default"  # switched back


@pytest.mark.parametrize("reference", ["reference", None])
def test_kto_raises_the_liked_answers_and_lowers_the_disliked_against_a_frozen_reference(reference):
    from reinf.training.imitate import answer_logp, encode, kto
    from reinf.training.lm import freeze_copy, use_adapter

    model = _toy_policy()
    if reference:  # as a run that continues from the active adapter: π_ref is a frozen copy of it
        freeze_copy(model, "default", reference)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if ".reference." in n}
    rated = [Example(str(i), f"q{i}", "abcabc" if i % 3 else "zzzz", 1.0 if i % 3 else -1.0, 1.0, True, i + 1, 0)
             for i in range(12)]  # fmt: skip
    kw = dict(max_prompt_tokens=8, max_response_tokens=8, stop_id=1, pad_id=0, seed=0)
    tok = _CharTokenizer()
    good = [encode(tok, e, 8, 8, 1) for e in rated if e.target > 0]
    bad = [encode(tok, e, 8, 8, 1) for e in rated if e.target < 0]
    with torch.no_grad():
        before = answer_logp(model, good, 0).mean().item(), answer_logp(model, bad, 0).mean().item()
    out = kto(
        model, tok, rated, reference=reference, epochs=6, learning_rate=0.02, beta=0.1, batch_size=4, **kw
    )
    assert (out["n_desirable"], out["n_undesirable"], out["steps"]) == (8, 4, 18)
    assert out["desirable_weight"] == 1.0  # 8 liked against 4 disliked: the disliked weigh 2, the liked 1
    assert out["loss_last_epoch"] < out["loss_first_epoch"] and out["margin_last_epoch"] > 0, out
    with torch.no_grad():
        after = answer_logp(model, good, 0).mean().item(), answer_logp(model, bad, 0).mean().item()
        with use_adapter(model, reference):  # π_ref did not move
            assert answer_logp(model, good, 0).mean().item() == pytest.approx(before[0], abs=1e-4)
    assert after[0] > before[0] + 1 and after[1] < before[1] - 1, (before, after)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if ".reference." in n)
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".reference." in n)
    liked_only = [e for e in rated if e.target > 0]  # KTO needs both kinds; with one it does nothing
    assert kto(model, tok, liked_only, reference=reference, epochs=2, learning_rate=0.02, beta=0.1,
               batch_size=4, **kw)["steps"] == 0  # fmt: skip


def test_ppo_ptx_keeps_the_liked_answers_likely_while_ppo_chases_its_reward():
    # The scripted reward (low token ids) pulls away from the liked answer, whose ids are all 32 or more. With
    # ptx_coef = 1 every PPO minibatch also imitates it, and its loss falls; without, the loss only drifts.
    from reinf.training.imitate import Demonstrations, demo_loss, encode

    liked = [Example(str(i), f"q{i}", "XYZXYZ", 1.0, 1.0, True, i + 1, 0) for i in range(8)]
    data = [encode(_CharTokenizer(), e, 8, 8, 1) for e in liked]
    losses = {}
    for coef in (0.0, 1.0):
        model = _toy_policy()
        demos = Demonstrations(model, data, batch_size=4, pad_id=0, seed=0)
        assert len(demos) == 8
        with torch.no_grad():
            before = demo_loss(model, demos.data, 0).item()
        history = _run_toy_ppo(1e-2, model=model, ptx=demos.loss, ptx_coef=coef, steps=6)
        with torch.no_grad():
            losses[coef] = (before, demo_loss(model, demos.data, 0).item())
        assert ("ptx_loss" in history[-1]) == (coef > 0)
    (b0, a0), (b1, a1) = losses[0.0], losses[1.0]
    assert b0 == pytest.approx(b1)  # the same toy policy to start from
    assert a1 < 0.5 * b1, losses
    assert a1 < 0.5 * a0, losses


def test_general_text_is_cut_into_windows_for_ppo_ptx():
    from reinf.training.data import general_texts, replay_texts
    from reinf.training.imitate import Demonstrations

    tok = _CharTokenizer()
    demos = Demonstrations.texts(None, tok, ["abcdefghij", "k"], window=4, batch_size=2, pad_id=0, seed=0)
    ids = tok("abcdefghij")["input_ids"]
    assert demos.data == [(ids[0:1], ids[1:4]), (ids[4:5], ids[5:8]), (ids[8:9], ids[9:10])]  # "k": no target
    texts = replay_texts()
    assert texts and all(t.strip() for t in texts)
    assert not set(texts) & set(general_texts())  # PPO-ptx never trains on what the gate measures


def test_the_length_floor_is_a_low_quantile_of_the_liked_answers():
    from reinf.training.gate import length_floor

    assert length_floor(list(range(1, 101)), 0.1) == pytest.approx(10.9 / 2)
    assert length_floor([], 0.1) == 0.0 and length_floor([5, 50], 0.0) == 0.0


def test_an_answer_under_the_length_floor_scores_lower_the_shorter_it_is():
    from reinf.training.gate import under_floor_scores

    scores = torch.tensor([0.5, -1.0, -1.0, -1.0, 0.2])
    lengths = torch.tensor([40, 20, 10, 0, 25])
    got = under_floor_scores(scores, lengths, 20.0, (-1.0, 1.0))
    assert got.tolist() == pytest.approx([0.5, -1.0, -2.0, -3.0, 0.2])  # at the floor and above: the judge's
    assert got[1] > got[2] > got[3]  # under it: each token shorter is worse, even when all are short
    assert under_floor_scores(scores, lengths, 0.0, (-1.0, 1.0)).tolist() == pytest.approx(scores.tolist())


def test_the_judges_check_tolerates_noise_but_not_a_real_drop():
    from reinf.training.gate import not_worse

    gen = torch.Generator().manual_seed(0)
    prompts, samples = 8, 4
    active = torch.randn(prompts * samples, generator=gen)
    noisy = active + 0.3 * torch.randn(prompts * samples, generator=gen)  # as good, another draw
    diff = noisy.view(prompts, -1).mean(1) - active.view(prompts, -1).mean(1)
    ok, se = not_worse(noisy - diff.std() / prompts**0.5 * 0.5 - diff.mean(), active, prompts, 1.0)
    assert ok and se == pytest.approx(
        float(diff.std() / prompts**0.5), rel=1e-5
    )  # half an error below: passes
    assert not not_worse(noisy - se * 2 - diff.mean(), active, prompts, 1.0)[0]  # two errors below: rejected
    assert not not_worse(active - 0.01, active, prompts, 0.0)[0]  # tolerance 0: no drop at all
    assert not_worse(active, active, prompts, 0.0)[0] and not_worse(active + 0.5, active, prompts, 1.0)[0]


def test_a_sequence_classifier_can_be_the_judge(tmp_path, model_dir):
    # reward_model.name names any AutoModelForSequenceClassification; the test model's folder loads as one.
    cfg, store = _home(tmp_path, model_dir, n=40, overrides={"reward_model": {"name": str(model_dir)}})
    run_dir = _prepare_run(cfg, store, model_dir)
    metrics = _train(run_dir)
    assert metrics["reward_model"]["retrained"] and metrics["reward_model"]["n_heldout"] >= 4
    assert metrics["decision"] in ("publish", "reject") and ("ppo" in metrics or metrics["reasons"])
    saved = cfg.home / "reward_model"
    assert (saved / "reward" / "adapter_config.json").exists()
    assert json.loads((saved / "meta.json").read_text())["identity"]["name"] == str(model_dir)
    store.close()


def test_chunked_logprobs_give_the_same_values_and_gradients():
    from reinf.training.ppo import ValueHead, response_logprobs

    model = _toy_policy()
    ids = torch.randint(3, 64, (3, 14), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    results = []
    for chunk in (10**9, 3 * 64 * 2):  # all at once; two positions at a time
        vh = ValueHead(64)
        model.zero_grad()
        lp, v = response_logprobs(model, ids, mask, 5, 0.7, vh, chunk=chunk)
        (lp.sum() + v.sum()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((lp.detach(), grads))
    (lp_a, g_a), (lp_b, g_b) = results
    assert lp_a.shape == (3, 9) and torch.allclose(lp_a, lp_b, atol=1e-6)
    assert g_a.keys() == g_b.keys() and g_a
    assert all(torch.allclose(g_a[k], g_b[k], rtol=1e-5, atol=1e-5) for k in g_a)  # summation order only


# -- the gate's check of the held-out ratings -------------------------------------------------------------


def test_the_ratings_margin_by_hand():
    from reinf.training.gate import ratings_margin

    liked = torch.tensor([True, True, False, False])
    # d = candidate − active = [1, 1, −1, −1]: the liked answers rose by 1 nat, the disliked fell by 1.
    margin, se = ratings_margin(torch.tensor([-1.0, -2, -5, -6]), torch.tensor([-2.0, -3, -4, -5]), liked)
    assert margin == pytest.approx(2.0) and se == pytest.approx(0.0)
    # d = [1, 3, 0, 0]: margin 2; the liked d's variance is 2 (n − 1 = 1), over 2 answers: se = 1.
    margin, se = ratings_margin(torch.tensor([1.0, 3, 0, 0]), torch.zeros(4), liked)
    assert margin == pytest.approx(2.0) and se == pytest.approx(1.0)
    # The other way round: the candidate raised the disliked answers.
    margin, _ = ratings_margin(torch.zeros(4), torch.tensor([1.0, 3, 0, 0]), liked)
    assert margin == pytest.approx(-2.0)
    with pytest.raises(ValueError, match="liked and disliked"):
        ratings_margin(torch.zeros(2), torch.zeros(2), torch.tensor([True, True]))


def _rated_toy(n: int = 12) -> list[Example]:
    return [Example(str(i), f"q{i}", "abcabc" if i % 2 else "zzzz", 1.0 if i % 2 else -1.0, 1.0, True, i + 1, 0)
            for i in range(n)]  # fmt: skip


def _ratings_spec(rated: list[Example]):
    from reinf.training.gate import GateSpec

    return GateSpec(prompt_texts=[], prompt_ids=[], rated=rated, candidate="default", active="active",
                    active_version=1, general=[], general_max_tokens=8, max_new_tokens=8, max_prompt_tokens=8,
                    temperature=1.0, stop_ids=[1], max_kl=1.0, max_general_loss_increase=0.05, seed=0,
                    tolerance_se=1.0)  # fmt: skip


def test_the_ratings_check_rejects_a_candidate_that_prefers_the_disliked_answers():
    from reinf.training.gate import ratings_check
    from reinf.training.imitate import kto
    from reinf.training.lm import freeze_copy

    model, tok, rated = _toy_policy(), _CharTokenizer(), _rated_toy()
    freeze_copy(model, "default", "active")
    same = ratings_check(model, tok, _ratings_spec(rated), "the active adapter v1")
    assert same["passed"] and same["margin"] == pytest.approx(0.0, abs=1e-4)  # equal to the active: passes
    inverted = [
        Example(e.interaction_id, e.prompt, e.response, -e.target, 1.0, True, e.rating_id, 0) for e in rated
    ]
    kto(model, tok, inverted, reference="active", epochs=4, learning_rate=0.02, beta=0.1, batch_size=4,
        max_prompt_tokens=8, max_response_tokens=8, stop_id=1, pad_id=0, seed=0)  # fmt: skip
    worse = ratings_check(model, tok, _ratings_spec(rated), "the active adapter v1")
    assert not worse["passed"] and worse["margin"] < -worse["margin_se"], worse
    assert "moved towards the ones you disliked" in worse["reason"] and "v1" in worse["reason"]
    one_kind = ratings_check(model, tok, _ratings_spec([e for e in rated if e.target > 0]), "the base model")
    assert one_kind["passed"] and one_kind["skipped"] and "needs both" in one_kind["line"]


# -- learning rates from the model's size -----------------------------------------------------------------


def test_learning_rates_follow_the_hidden_size_unless_set():
    from reinf.config import TrainingConfig
    from reinf.training.hparams import MIN_RATE, learning_rates

    tiny = learning_rates(TrainingConfig(), 256)
    assert (tiny.ppo, tiny.warm_start) == (pytest.approx(2e-3), pytest.approx(5e-4))
    qwen = learning_rates(TrainingConfig(), 896)  # Qwen2.5-Coder-0.5B
    assert qwen.ppo == pytest.approx(2e-3 * 256 / 896) and qwen.warm_start == pytest.approx(5e-4 * 256 / 896)
    assert learning_rates(TrainingConfig(), 64).ppo == pytest.approx(2e-3)  # never above the measured rate
    assert learning_rates(TrainingConfig(), 10**6).warm_start == MIN_RATE
    assert qwen.completions == pytest.approx(2e-3 * 256 / 896) and tiny.completions == pytest.approx(2e-3)
    set_by_user = learning_rates(
        TrainingConfig(learning_rate=1e-4, warm_start_learning_rate=3e-5, completion_learning_rate=2e-5), 896
    )
    assert (set_by_user.ppo, set_by_user.warm_start, set_by_user.completions) == (1e-4, 3e-5, 2e-5)
