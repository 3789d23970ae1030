"""Learning from completions: what the user wrote or took at the cursor trains the policy, the judge and the gate."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from reinf.config import Config
from reinf.fim import TEMPLATES
from reinf.store import Store
from reinf.training import data
from tests.trainer_fixtures import FAST_TRAINING, tiny_model

FIM = TEMPLATES["reinf"]  # reinf-tiny's markers
# (code before the cursor, the suggestion turned down, what the user wrote instead)
CASES = [
    (f"def load_{n}(path):\n    ", "pass", f"log.info('loading {n}')") for n in ("users", "orders", "items", "jobs")
] + [(f"class {n.title()}Store:\n    def save(self, row):\n        ", "return None", "self._rows.append(row)")
     for n in ("user", "order", "item", "job")]  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return tiny_model()


def _policy(model_dir: Path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reinf.training.lm import freeze_copy

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    model = get_peft_model(
        base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    )
    freeze_copy(model, "default", "active")  # as a run that starts from the active adapter
    return model, tok


def _margins(model, tok, pairs, adapter: str) -> torch.Tensor:
    """log π(typed | FIM prompt) − log π(suggested | FIM prompt) per pair, under `adapter`."""
    from reinf.training.gate import wanted_logps

    kw = dict(max_prompt_tokens=64, max_response_tokens=24)
    typed = wanted_logps(model, tok, [(p, w) for p, w, _ in pairs], adapter, **kw)
    suggested = wanted_logps(model, tok, [(p, s) for p, _, s in pairs], adapter, **kw)
    return typed - suggested


def _dpo(model, tok, pairs, epochs: int = 6, nll_coef: float = 0.0):
    from reinf.training.imitate import dpo

    return dpo(model, tok, pairs, reference="active", epochs=epochs, learning_rate=5e-3, beta=0.1, batch_size=4,
               max_prompt_tokens=64, max_response_tokens=24, stop_id=tok.eos_token_id, pad_id=tok.eos_token_id,
               seed=0, nll_coef=nll_coef)  # fmt: skip


def test_completion_events_say_what_the_user_wanted():
    def row(i, response, **kw):
        return {"interaction_id": str(i), "kind": "completion", "prompt": FIM.render("x = ", ""), "response": response,
                "accepted": 0, "dismissed": 0, "partially_accepted": 0, "typed_through": 0, "typed": None, **kw}  # fmt: skip

    rows = [
        row(1, "foo()", accepted=1),
        row(2, "bar()", dismissed=1, typed="baz()"),
        row(3, "qux()", dismissed=1),
        row(4, "foo(1)", partially_accepted=1, typed="foo(2)"),
        row(5, "foo(", partially_accepted=1),  # how much was taken is unknown: nothing to learn
        row(6, "zap()", typed_through=1),  # typed it all through: what they wanted
        {**row(7, "no"), "kind": "chat", "accepted": 1},
        # cut at the size bound: it does not end there
        row(8, "a", dismissed=1, typed="b" * 50, typed_truncated=True),
    ]
    events = data.completion_events(rows)
    assert [(e.interaction_id, e.outcome, e.wanted) for e in events] == [
        ("1", "accepted", "foo()"), ("2", "corrected", "baz()"), ("3", "dismissed", None),
        ("4", "corrected", "foo(2)"), ("6", "accepted", "zap()"), ("8", "corrected", "b" * 50),
    ]  # fmt: skip
    p = FIM.render("x = ", "")
    assert data.completion_pairs(events) == [
        (p, "foo()", "", True), (p, "baz()", "bar()", True), (p, "foo(2)", "foo(1)", True), (p, "zap()", "", True),
        (p, "b" * 50, "a", False),
    ]  # fmt: skip
    assert data.wanted_texts(events)[-1] == (p, "b" * 50, False)
    events = events[:-1]
    # The judge: corrections, and a suggestion taken over one dismissed at the same prompt; no empty answers.
    assert data.judge_pairs(events) == [
        (p, "baz()", "bar()"), (p, "foo(2)", "foo(1)"), (p, "foo()", "qux()"), (p, "zap()", "qux()"),
    ]  # fmt: skip
    train, held = data.split_events(events, 0.5)
    assert sorted(e.interaction_id for e in train + held) == ["1", "2", "3", "4", "6"] and not {
        e.interaction_id for e in train
    } & {e.interaction_id for e in held}


def test_an_event_keeps_all_the_user_had_at_the_cursor_and_where_it_was_made():
    """The gate's suggestions check needs all the user had at the cursor (not only the first statement that the
    policy learns), the language and the kind of suggestion the daemon made there."""
    p = FIM.render("def f(x):\n", "")
    context = json.dumps({"language": "python", "mode": "block"})
    rows = [
        {"interaction_id": "1", "kind": "completion", "prompt": p, "response": "    pass", "dismissed": 1,
         "typed": "    y = x\n    return y", "context": context},
        # typed through, and went on writing: a suggestion that ran on into what they wrote would be taken too
        {"interaction_id": "2", "kind": "completion", "prompt": p, "response": "    y = x", "typed_through": 1,
         "typed": "    y = x", "context": {"language": "python", "mode": "line"}},
        {"interaction_id": "3", "kind": "completion", "prompt": p, "response": "    z", "accepted": 1,
         "context": "not json"},
        {"interaction_id": "4", "kind": "completion", "prompt": p, "response": "    q", "dismissed": 1},
    ]  # fmt: skip
    events = data.completion_events(rows)
    assert [(e.wanted, e.written, e.language, e.mode) for e in events] == [
        ("    y = x", "    y = x\n    return y", "python", "block"), ("    y = x", "    y = x", "python", "line"),
        ("    z", "    z", None, None), (None, None, None, None),
    ]  # fmt: skip


def test_a_suggestion_is_taken_whole_only_where_what_the_user_had_starts_with_it():
    from reinf.training.gate import taken_whole

    assert taken_whole("y = x", "y = x\nreturn y") and taken_whole("y = x\nreturn", "y = x   \nreturn y")
    assert not taken_whole("", "y = x") and not taken_whole("y = x\nreturn z", "y = x\nreturn y")
    assert not taken_whole("y = x + 1", "y = x")  # longer than all they had: not known to be wanted


def test_a_correction_teaches_its_first_statement_and_stops_where_the_user_went_on():
    """The editor asks again at the next line, so what the user wrote on the lines after the first statement is
    those cursors' label, not this one's: here they wanted the statement, and ended it by going on."""
    p = FIM.render("def f(x):\n", "")

    def row(i, response, typed, language="python", **kw):
        return {"interaction_id": str(i), "kind": "completion", "prompt": p, "response": response, "dismissed": 1,
                "typed": typed, "context": json.dumps({"language": language}), **kw}  # fmt: skip

    rows = [
        row(1, "    y = x\n    return y", "    return x + 1\n\ndef g():"),
        # cut at the size bound, but the first statement ended before the bound: it ends
        row(2, "    pass", "    total = sum(\n        x)\n    log.info(total)", typed_truncated=True),
        # the suggestion's first statement was right and the rest wrong: taken, and it stops there
        row(3, "    y = x\n    print(y)", "    y = x\n    return y"),
        # brace languages: the statement runs to its closing brace
        row(4, "if (x) {}", "if (x) {\n  go();\n}\nstop();", language="javascript"),
        # one line that did not end (the user stopped in it): all of it, the truncation flag as stored
        row(5, "    pass", "    return f(x,", typed_truncated=True),
    ]
    assert [(e.outcome, e.wanted, e.ends) for e in data.completion_events(rows)] == [
        ("corrected", "    return x + 1", True), ("corrected", "    total = sum(\n        x)", True),
        ("corrected", "    y = x", True), ("corrected", "if (x) {\n  go();\n}", True),
        ("corrected", "    return f(x,", False),
    ]  # fmt: skip


def test_corrections_move_the_policy_towards_what_was_typed(model_dir):
    model, tok = _policy(model_dir)
    pairs = [(FIM.render(pre, "\n"), typed, suggested) for pre, suggested, typed in CASES]
    before = _margins(model, tok, pairs, "default")
    out = _dpo(model, tok, pairs)
    after = _margins(model, tok, pairs, "default")
    assert out["n_pairs"] == len(pairs) and out["loss_last_epoch"] < out["loss_first_epoch"], out
    # Every pair: what the user typed gained on the suggestion they turned down, by over a nat on average.
    assert (after > before).all() and (after - before).mean() > 1.0, (before, after)
    # The reference (the active adapter) did not move.
    assert torch.allclose(_margins(model, tok, pairs, "active"), before, atol=1e-4)


def test_the_shipped_preference_loss_makes_what_was_typed_what_the_model_writes(model_dir):
    """DPO alone widens the margin; with the shipped NLL term what the user typed also gets likelier itself, and
    the model starts to write it: more of its tokens are the greedy choice than after DPO alone."""
    from reinf.config import TrainingConfig
    from reinf.training.gate import wanted_logps
    from reinf.training.imitate import encode_prompt

    coef = TrainingConfig().dpo_nll_coef
    assert coef > 0
    pairs = [(FIM.render(pre, "\n"), typed, suggested) for pre, suggested, typed in CASES]
    kw = dict(max_prompt_tokens=64, max_response_tokens=24)

    def typed_logp(model) -> torch.Tensor:
        return wanted_logps(model, tok, [(p, w) for p, w, _ in pairs], "default", **kw)

    def greedy_share(model) -> float:
        """Of the typed texts' tokens, the share that is the model's greedy choice after the ones before."""
        hits = total = 0
        with torch.no_grad():
            for p, w, _ in pairs:
                ids = encode_prompt(tok, p, keep_last=64)
                want = tok(w, add_special_tokens=False)["input_ids"]
                logits = model(input_ids=torch.tensor([ids + want])).logits[0]
                picks = logits[len(ids) - 1 : len(ids) - 1 + len(want)].argmax(-1).tolist()
                hits += sum(a == b for a, b in zip(picks, want, strict=True))
                total += len(want)
        return hits / total

    results = {}
    for name, c in (("dpo", 0.0), ("shipped", coef)):
        model, tok = _policy(model_dir)
        before = typed_logp(model)
        _dpo(model, tok, pairs, nll_coef=c)
        results[name] = (typed_logp(model) - before, greedy_share(model))
    gain_dpo, share_dpo = results["dpo"]
    gain, share = results["shipped"]
    assert (gain > 0).all(), gain  # every typed text got likelier itself, not only against its suggestion
    assert gain.mean() > gain_dpo.mean() + 1.0, (gain, gain_dpo)
    assert share > share_dpo, (share, share_dpo)


def test_the_distance_from_the_base_in_dpo_holds_back_the_drift(model_dir):
    """With the shipped KL(base ‖ policy) on general Python in every DPO step, the loss on other general code rises
    less than with DPO alone, and the pairs are still learnt. (That it holds back more than a next-token loss on
    the same texts shows on a trained model, bench/results/HISTORY.md; this test's random weights learn from any
    text.)"""
    from reinf.config import TrainingConfig
    from reinf.training.data import replay_texts, stdlib_texts
    from reinf.training.imitate import Demonstrations, GeneralGuard, demo_loss, dpo

    coef = TrainingConfig().dpo_general_kl_coef
    pairs = [(FIM.render(pre, "\n"), typed, suggested) for pre, suggested, typed in CASES]
    held = stdlib_texts("test", 0, 4, 1500)  # not among the replay texts

    def general(model, tok) -> float:
        rows = [
            ([ids[0]], ids[1:128]) for ids in (tok(t, add_special_tokens=False)["input_ids"] for t in held)
        ]
        with torch.no_grad():
            return float(demo_loss(model, rows, tok.eos_token_id))

    drift, margins = {}, {}
    for name in ("dpo", "kl"):
        model, tok = _policy(model_dir)
        before, m0 = general(model, tok), _margins(model, tok, pairs, "default")
        demos = Demonstrations.texts(model, tok, replay_texts(8, 1500), window=64, batch_size=4,
                                     pad_id=tok.eos_token_id, seed=0)  # fmt: skip
        term = GeneralGuard(demos, coef, target=None) if name == "kl" else None
        dpo(model, tok, pairs, reference="active", epochs=6, learning_rate=5e-3, beta=0.1, batch_size=4,
            max_prompt_tokens=64, max_response_tokens=24, stop_id=tok.eos_token_id, pad_id=tok.eos_token_id,
            seed=0, nll_coef=1.0, general=term)  # fmt: skip
        drift[name] = general(model, tok) - before
        margins[name] = (_margins(model, tok, pairs, "default") - m0).mean().item()
    assert drift["kl"] < 0.5 * drift["dpo"], drift
    assert margins["kl"] > 1.0, margins


def _drifted(model) -> None:
    """Move the policy adapter off the base, as a run that went far from it would have."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name and ".default." in name:
                p.normal_(0, 0.05)


def test_the_guard_raises_the_weight_while_the_drift_is_over_its_target_and_pulls_the_model_back(model_dir):
    from reinf.training.data import replay_texts
    from reinf.training.imitate import Demonstrations, GeneralGuard, dpo

    def guard(model, tok, target):
        demos = Demonstrations.texts(model, tok, replay_texts(8, 1500), window=64, batch_size=4,
                                     pad_id=tok.eos_token_id, seed=0)  # fmt: skip
        return GeneralGuard(demos, 1.0, target=target)

    model, tok = _policy(model_dir)  # the policy is the base: no drift, the weight stays
    at_base = guard(model, tok, 0.01)
    at_base.check()
    assert at_base.history[0]["drift"] == pytest.approx(0.0, abs=1e-6) and at_base.weight == 1.0
    _drifted(model)
    at_base.check()
    assert at_base.history[1]["drift"] > 0.01 and at_base.weight == 2.0
    # Over its target the guard's weight keeps rising and the model comes back towards the base, while the
    # pairs are learnt; a fixed weight leaves it further away.
    pairs = [(FIM.render(pre, "\n"), typed, suggested) for pre, suggested, typed in CASES]
    end, learnt = {}, {}
    for name, target in (("fixed", None), ("guarded", 1e-3)):
        model, tok = _policy(model_dir)
        _drifted(model)
        g = guard(model, tok, target)
        start, m0 = g.drift(), _margins(model, tok, pairs, "default")
        out = dpo(model, tok, pairs, reference="active", epochs=6, learning_rate=5e-3, beta=0.1, batch_size=4,
                  max_prompt_tokens=64, max_response_tokens=24, stop_id=tok.eos_token_id, pad_id=tok.eos_token_id,
                  seed=0, nll_coef=1.0, general=g)  # fmt: skip
        end[name], learnt[name] = (
            g.drift() / start,
            (_margins(model, tok, pairs, "default") - m0).mean().item(),
        )
        if name == "guarded":
            assert out["general_guard"]["weight_max"] > 1.0 and out["general_guard"]["drift_last"] is not None
    assert end["guarded"] < end["fixed"], end
    assert learnt["guarded"] > 1.0, learnt


def test_the_distance_from_the_base_is_zero_at_the_base_and_chunks_do_not_change_it(model_dir, monkeypatch):
    from reinf.training import imitate
    from reinf.training.data import replay_texts

    model, tok = _policy(model_dir)

    def demos():
        return imitate.Demonstrations.texts(model, tok, replay_texts(4, 800), window=48, batch_size=3,
                                            pad_id=tok.eos_token_id, seed=1)  # fmt: skip

    assert float(demos().kl_to_base()) == pytest.approx(0.0, abs=1e-6)  # a fresh LoRA is the base
    _drifted(model)
    whole = demos().kl_to_base()
    whole.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n and ".default." in n]
    assert float(whole) > 1e-3 and all(g is not None and g.abs().sum() > 0 for g in grads)
    monkeypatch.setattr(imitate, "KL_CHUNK", 5)
    assert float(demos().kl_to_base()) == pytest.approx(float(whole), rel=1e-5)


def test_an_accepted_suggestion_is_preferred_over_showing_nothing(model_dir):
    from reinf.training.imitate import answer_logp, encode_pair

    model, tok = _policy(model_dir)
    pairs = [(FIM.render(pre, "\n"), typed, "") for pre, _, typed in CASES]  # taken whole: over nothing
    enc = [encode_pair(tok, p, 64, 24, tok.eos_token_id) for p in pairs]
    assert all(bad == [tok.eos_token_id] for _, _, bad in enc)  # nothing = stopping at once

    def stop_logp() -> float:
        with torch.no_grad():
            return float(answer_logp(model, [(p, bad) for p, _, bad in enc], tok.eos_token_id).mean())

    before = stop_logp()
    _dpo(model, tok, pairs)
    assert stop_logp() < before - 0.5


def _spec(completions, **kw):
    from reinf.training.gate import GateSpec

    return GateSpec(prompt_texts=[], prompt_ids=[], rated=[], candidate="default", active="active",
                    active_version=1, general=[], general_max_tokens=8, max_new_tokens=24, max_prompt_tokens=64,
                    temperature=1.0, stop_ids=[0], max_kl=1.0, max_general_loss_increase=0.05, seed=0,
                    tolerance_se=1.0, completions=completions, **kw)  # fmt: skip


def test_the_completions_margin_by_hand():
    from reinf.training.gate import completions_margin

    # d = candidate − active = [−1, −1, −1, −1]: what users typed fell by one nat everywhere; se 0.
    margin, se = completions_margin(torch.tensor([-3.0, -4, -5, -6]), torch.tensor([-2.0, -3, -4, -5]))
    assert margin == pytest.approx(-1.0) and se == pytest.approx(0.0)
    # d = [1, 3, −1, 1]: mean 1, sample variance 8/3, over 4 events: se = sqrt(2/3).
    margin, se = completions_margin(torch.tensor([1.0, 3, -1, 1]), torch.zeros(4))
    assert margin == pytest.approx(1.0) and se == pytest.approx((2 / 3) ** 0.5)
    assert completions_margin(torch.zeros(3), torch.zeros(3)) == (0.0, 0.0)
    with pytest.raises(ValueError, match="at least one event"):
        completions_margin(torch.zeros(0), torch.zeros(0))


def test_the_gate_rejects_a_candidate_that_makes_what_users_typed_less_likely(model_dir):
    from reinf.training.gate import MIN_COMPLETION_EVENTS, completions_check

    model, tok = _policy(model_dir)
    held = [(FIM.render(pre, "\n"), typed) for pre, _, typed in CASES]
    same = completions_check(model, tok, _spec(held), "the active adapter v1")
    assert same["passed"] and not same["skipped"] and same["margin"] == pytest.approx(0.0, abs=1e-4), same
    assert "8 held-out completions" in same["line"] and "+0.00 nats" in same["line"]
    # Trained the wrong way round (the suggestions over what was typed), it must be turned down.
    _dpo(model, tok, [(FIM.render(pre, "\n"), suggested, typed) for pre, suggested, typed in CASES])
    worse = completions_check(model, tok, _spec(held), "the active adapter v1")
    assert not worse["passed"] and worse["margin"] < -worse["margin_se"], worse
    assert "less likely than the active adapter v1" in worse["reason"]
    few = completions_check(model, tok, _spec(held[: MIN_COMPLETION_EVENTS - 1]), "the base model")
    assert few["passed"] and few["skipped"] and f"needs {MIN_COMPLETION_EVENTS}" in few["line"]


def test_the_gate_turns_down_a_candidate_whose_suggestions_users_would_take_less_often(model_dir):
    """At held-out cursors each adapter suggests again, as the daemon would; one taught to write what the users
    wrote is taken more often than the untrained one, and the untrained one, as a candidate, is turned down."""
    from reinf.training.gate import MIN_COMPLETION_EVENTS, HeldCursor, suggestions_check
    from reinf.truncate import Limits, Scope

    model, tok = _policy(model_dir)
    cursors = [HeldCursor(FIM.render(pre, "\n"), Scope(pre, "\n", "python", Limits()), typed)
               for pre, _, typed in CASES]  # fmt: skip
    spec = _spec([], cursors=cursors, suggest_max_tokens=24, suggest_stop_texts=FIM.stop)
    same = suggestions_check(model, tok, spec, "the active adapter v1")
    assert same["passed"] and not same["skipped"] and same["margin"] == 0.0 and same["changed"] == 0, same
    _dpo(model, tok, [(c.prompt, c.written, s) for c, (_, s, _) in zip(cursors, CASES, strict=True)], epochs=80,
         nll_coef=1.0)  # fmt: skip
    better = suggestions_check(model, tok, spec, "the active adapter v1")
    assert better["passed"] and better["candidate_taken"] > better["active_taken"], better
    assert f"you would have taken {better['candidate_taken']} of the candidate's whole" in better["line"]
    # The same two adapters the other way round: the candidate suggests what users take less often.
    worse = suggestions_check(
        model, tok, replace(spec, candidate="active", active="default"), "the adapter v1"
    )
    assert not worse["passed"] and worse["margin"] < -worse["margin_se"], worse
    assert worse["margin"] == pytest.approx(-better["margin"])
    assert "suggests what you would take whole less often than the adapter v1" in worse["reason"]
    few = suggestions_check(
        model, tok, replace(spec, cursors=cursors[: MIN_COMPLETION_EVENTS - 1]), "the base"
    )
    assert few["passed"] and few["skipped"] and f"needs {MIN_COMPLETION_EVENTS}" in few["line"]


def _completion_home(tmp_path: Path, model_dir: Path, n: int) -> tuple[Config, Store]:
    """A home where the user only completed code: each suggestion dismissed and corrected, or taken."""
    d = Config(home=tmp_path / "home").to_dict()
    for section, values in FAST_TRAINING.items():
        d[section].update(values)
    cfg = Config.from_dict(d)
    cfg.home.mkdir()
    store = Store(cfg.home / "reinf.duckdb")
    for i in range(n):
        pre, suggested, typed = CASES[i % len(CASES)]
        pre = f"# file {i}\n{pre}"
        take = i % 4 == 0
        iid = store.add_interaction(interaction_id=f"c{i:031x}",  # fixed: the held-out split is the same each time
                                    kind="completion", client="test", model="reinf-tiny-test", adapter_version=0,
                                    prompt=FIM.render(pre, "\n"), context={}, response=typed if take else suggested,
                                    finish_reason="stop", timings={})  # fmt: skip
        if take:
            store.add_completion_event(iid, "accepted", shown_ms=500, accepted_chars=len(typed))
        else:
            store.add_completion_event(iid, "dismissed", shown_ms=500)
            store.add_correction(iid, "dismissed", typed, False, "lines")
    return cfg, store


def test_a_user_who_only_completes_code_gets_a_run_from_the_completions(tmp_path, model_dir):
    from tests.test_trainer import _prepare_run, _train

    cfg, store = _completion_home(tmp_path, model_dir, 48)
    metrics = _train(_prepare_run(cfg, store, model_dir))
    assert metrics["data"]["completions"]["corrected"] + metrics["data"]["completions"]["accepted"] == 48
    assert metrics["used_ratings"] is False  # no rating was used: the count towards a rated run stays
    assert "completions alone" in metrics["reward_model"]["skipped"] and "skipped" in metrics["ppo"]
    dpo = metrics["completions"]["dpo"]
    assert dpo["steps"] > 0 and dpo["loss_last_epoch"] < dpo["loss_first_epoch"], dpo
    lines = "\n".join(metrics["checks"])
    assert "judge's score: not checked (no judge: too few ratings" in lines
    assert "held-out completions: what you wrote or took at the cursor is +" in lines, lines
    suggestions = metrics["gate"]["suggestions"]
    assert (
        not suggestions["skipped"] and suggestions["n_events"] == metrics["data"]["completions"]["held_out"]
    )
    assert f"suggestions at your {suggestions['n_events']} held-out cursors" in lines, lines
    assert metrics["gate"]["completions"]["margin"] > 0 and metrics["decision"] == "publish", metrics[
        "reasons"
    ]
    store.close()


def test_a_run_learns_from_the_completions_new_since_the_active_adapter(tmp_path, model_dir):
    from tests.test_trainer import _prepare_run, _train

    cfg, store = _completion_home(tmp_path, model_dir, 48)
    cfg.training.completion_replay = 2  # below the earlier ones' count, so the bound shows
    fraction = cfg.reward_model.holdout_fraction
    held1 = sum(data.held_out(f"c{i:031x}", fraction) for i in range(48))
    held2 = sum(data.held_out(f"c{i:031x}", fraction) for i in range(48, 64))
    assert held1 > 0 and 0 < held2 < 16  # the fixed ids split so that every count below shows
    run1 = _prepare_run(cfg, store, model_dir)
    first = _train(run1)
    done = first["data"]["completions"]
    assert first["decision"] == "publish" and done["held_out"] == held1 and done["held_out_after"] == 0
    assert done["new_to_the_active_adapter"] == 48 - held1
    watermark = store.list_runs(limit=1)[0]["event_watermark"]
    # 16 more suggestions after that run: the next run learns from them but those it holds out for its gate,
    # from the ones the first run held out (new to the adapter: it never learnt them), and goes over
    # completion_replay (2) times as many of the others again, not all of them.
    for i in range(48, 64):
        pre, suggested, typed = CASES[i % len(CASES)]
        iid = store.add_interaction(interaction_id=f"c{i:031x}", kind="completion", client="test",
                                    model="reinf-tiny-test", adapter_version=1, prompt=FIM.render(f"# {i}\n{pre}", "\n"),
                                    context={}, response=suggested, finish_reason="stop", timings={})  # fmt: skip
        store.add_completion_event(iid, "dismissed", shown_ms=500)
        store.add_correction(iid, "dismissed", typed, False, "lines")
    active = {"version": 1, "path": str(run1 / "adapter"), "event_watermark": watermark, "held_out_after": 0}
    second = _train(_prepare_run(cfg, store, model_dir, active=active))["data"]["completions"]
    assert second["corrected"] + second["accepted"] == 64
    # Held out: only the new ones the hash holds, which neither the adapter nor the candidate learnt.
    assert second["held_out"] == held2 and second["held_out_after"] == watermark
    assert second["held_out_before"] == held1
    new = second["new_to_the_active_adapter"]
    assert new == 16 - held2 + held1
    assert second["replayed"] == min(cfg.training.completion_replay * new, 64 - held2 - new) > 0
    assert second["pairs"] == new + second["replayed"]
    # An adapter whose run's watermark is unknown (from before watermarks) learns from all but the held-out.
    old = {"version": 1, "path": str(run1 / "adapter"), "event_watermark": None}
    third = _train(_prepare_run(cfg, store, model_dir, active=old))["data"]["completions"]
    assert third["new_to_the_active_adapter"] == 64 - held1 - held2 and third["replayed"] == 0
    store.close()


def test_each_run_holds_out_only_what_the_active_adapter_never_learnt_and_learns_it_next():
    """Runs in a row, each from the adapter the one before made: the gate's events were never in any earlier
    run's training set, and every event but the last run's held-out ones is new to exactly one run."""
    fraction = 0.3
    events = [data.CompletionEvent(f"e{i}", "p", "s", "corrected", "w", event_id=i + 1) for i in range(200)]
    learnt: set[str] = set()  # everything any earlier run could learn from
    new_counts: dict[str, int] = {}
    watermark, held_after = None, None
    for end in (40, 90, 91, 150, 200):  # the events there as each run starts (91: one new event only)
        split = data.split_for_run(events[:end], fraction, watermark, held_after)
        held = {e.interaction_id for e in split.held}
        assert not held & learnt and (held or end == 91)
        assert not held & {e.interaction_id for e in split.train}
        assert {e.interaction_id for e in split.new} <= {e.interaction_id for e in split.train}
        for e in split.new:
            new_counts[e.interaction_id] = new_counts.get(e.interaction_id, 0) + 1
        learnt |= {e.interaction_id for e in split.train}
        held_after, watermark = watermark or 0, end
    last_held = {e.interaction_id for e in split.held}
    assert set(new_counts) == {e.interaction_id for e in events} - last_held
    assert set(new_counts.values()) == {1}


def test_too_few_ratings_and_completions_is_a_rejection_that_says_both(tmp_path, model_dir):
    from tests.test_trainer import _prepare_run, _train

    cfg, store = _completion_home(tmp_path, model_dir, 4)
    metrics = _train(_prepare_run(cfg, store, model_dir))
    assert metrics["decision"] == "reject"
    assert "too few ratings" in metrics["reasons"][0] and "too few completions" in metrics["reasons"][0]
    store.close()


def test_the_simulated_developer_takes_what_they_would_type_and_types_the_rest():
    from bench.completion_baselines import ask_positions, decide, figures, type_file

    assert decide("total = 0", "total = 0\n") == ({"event": "accepted", "accepted_chars": 9}, 9)
    # The matching part, back to a word's end: "total" of "totals = []" against "total_count = 0".
    assert decide("total_sum = 1", "total_count = 0") == ({"event": "dismissed"}, 0)
    assert decide("log.info(x)", "log.warning(x)") == (
        {"event": "partially_accepted", "accepted_chars": 4, "accepted_words": 1}, 4,
    )  # fmt: skip
    truth = "def f(a):\n    return a\n"
    assert ask_positions(truth) == [0, 6, 14]
    right = type_file(truth, lambda pos: (truth[pos:].split("\n")[0], pos))
    # "def f(a):" taken whole from 0 passes the place at 6; typed by hand: the line break and indent, the last "\n".
    assert (right["asked"], right["accepted"], right["typed_by_hand"]) == (2, 2, 6), right
    events = []
    wrong = type_file(truth, lambda pos: ("zzz", pos), lambda h, e: events.append((h, e["event"])))
    assert events == [(0, "dismissed"), (6, "dismissed"), (14, "dismissed")]
    assert wrong["typed_by_hand"] == len(truth) and figures([wrong])["acceptance_rate"] == 0.0


def test_the_fim_baselines_learn_the_files_only_as_far_as_they_had_been_typed():
    """The benchmark's FIM baselines learn from what the final adapter's run had: the places asked at up to where
    the developer was when it started, not the rest of the files typed after it."""
    from bench.completion_baselines import file_pairs

    class Prompts:  # the FIM prompt as the daemon would make it, here the prefix itself
        def fim_prompt(self, prefix: str) -> str:
            return prefix

    files = {"a.py": "def f(a):\n    return a\n", "b.py": "x = 1\n", "c.py": "y = 2\n"}
    every = file_pairs(Prompts(), files)
    assert [m for _, m in every] == ["def f(a):", "a):", "return a", "x = 1", "1", "y = 2", "2"]
    # Stopped at b.py's "= " (offset 4): all of a.py, b.py up to there, nothing of c.py.
    seen = file_pairs(Prompts(), files, {"a.py": 14, "b.py": 4})
    assert seen == every[:5] and seen[-1] == ("x = ", "1")
    assert file_pairs(Prompts(), files, {}) == []


def test_the_judge_learns_that_what_was_typed_beats_the_suggestion(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reinf.training import reward
    from reinf.training.data import Example
    from reinf.training.run import target_modules

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=target_modules(base)))
    rm = reward.PolicyRewardModel.create(model, tok, 8, 128, target_modules(base))
    pairs = [(FIM.render(pre, "\n"), typed, suggested) for pre, suggested, typed in CASES]
    # A few rated chats, as a judge always has some; they say nothing about the completions.
    rated = [Example(str(i), f"q{i}", "an answer" if i % 2 else "another", (-1.0) ** i, 1.0, True, i + 1, 0)
             for i in range(8)]  # fmt: skip

    def wins() -> int:
        typed = reward.score(rm, [p for p, _, _ in pairs], [t for _, t, _ in pairs])
        suggested = reward.score(rm, [p for p, _, _ in pairs], [s for _, _, s in pairs])
        return int((typed > suggested).sum())

    out = reward.fit(rm, rated, epochs=3, batch_size=4, learning_rate=3e-3, seed=0, text_pairs=pairs)
    assert out["n_completion_pairs"] == len(pairs)
    assert wins() == len(pairs)


def test_ratings_and_completions_train_together(tmp_path, model_dir):
    from tests.test_trainer import _prepare_run, _train
    from tests.trainer_fixtures import fill_home

    cfg, store = _completion_home(tmp_path, model_dir, 48)
    fill_home(store, model_dir, 64)
    metrics = _train(_prepare_run(cfg, store, model_dir))
    assert metrics["used_ratings"] is True and metrics["imitation"]["method"] == "kto"
    # The judge had the corrections as pairs, the warm start had DPO on them, PPO rolled out their FIM prompts.
    assert metrics["reward_model"]["n_completion_pairs"] > 0
    assert metrics["completions"]["dpo"]["steps"] > 0
    prompts = metrics["ppo"]["prompts"]
    assert metrics["ppo"]["steps"] == 6 and 0 < prompts["of_completions"] < prompts["user"], prompts
    completions = metrics["gate"]["completions"]
    assert not completions["skipped"] and completions["n_events"] >= 8
    assert any("held-out completions: what you wrote or took" in line for line in metrics["checks"])
    store.close()


def test_the_fim_finetune_makes_what_was_taken_or_written_likelier(model_dir):
    from reinf.training.gate import wanted_logps
    from reinf.training.imitate import fim_finetune

    model, tok = _policy(model_dir)
    wanted = [(FIM.render(pre, "\n"), typed) for pre, _, typed in CASES]
    kw = dict(max_prompt_tokens=64, max_response_tokens=24)
    before = wanted_logps(model, tok, wanted, "default", **kw)
    out = fim_finetune(model, tok, wanted, epochs=4, learning_rate=5e-3, batch_size=4, pad_id=tok.eos_token_id,
                       seed=0, **kw)  # fmt: skip
    after = wanted_logps(model, tok, wanted, "default", **kw)
    assert out["n_examples"] == len(wanted) and out["loss_last_epoch"] < out["loss_first_epoch"], out
    assert (after > before).all() and (after - before).mean() > 1.0, (before, after)


def test_what_the_user_wanted_ends_with_the_stop_token_unless_it_was_cut(model_dir):
    from reinf.training.imitate import encode_pair, wanted_ids

    _, tok = _policy(model_dir)
    eos, ids = tok.eos_token_id, tok("total = 0", add_special_tokens=False)["input_ids"]
    assert wanted_ids(tok, "total = 0", 24, eos) == ids + [eos]
    assert wanted_ids(tok, "total = 0", 24, eos, ends=False) == ids  # a correction cut at the bound
    assert wanted_ids(tok, "total = 0", len(ids), eos) == ids  # no room left: cut, so it does not end
    assert wanted_ids(tok, "total = 0", 24, None) == ids
    p = FIM.render("x = ", "")
    _, good, bad = encode_pair(tok, (p, "total = 0", "tot"), 64, 24, eos)
    assert good == ids + [eos] and bad == tok("tot", add_special_tokens=False)["input_ids"]


def test_dpo_on_corrections_teaches_where_to_stop(model_dir):
    """After the corrections, the stop token right after what the user typed is likelier: the next suggestion
    there ends where the user did, instead of running on."""
    from reinf.training.imitate import answer_logp, encode_prompt

    model, tok = _policy(model_dir)
    pairs = [(FIM.render(pre, "\n"), typed, suggested, True) for pre, suggested, typed in CASES]

    def stop_after_typed() -> float:
        rows = [
            (encode_prompt(tok, p, keep_last=64), tok(t, add_special_tokens=False)["input_ids"])
            for p, t, *_ in pairs
        ]
        with torch.no_grad():
            full = answer_logp(model, [(p, a + [tok.eos_token_id]) for p, a in rows], tok.eos_token_id)
            text = answer_logp(model, rows, tok.eos_token_id)
        return float((full - text).mean())  # log π(stop | prompt, typed)

    before = stop_after_typed()
    _dpo(model, tok, pairs, nll_coef=1.0)
    assert stop_after_typed() > before + 1.0, before
