"""The PPO maths in training/ppo.py, against numbers worked out by hand (the working is in the comments)."""

import math

import pytest
import torch

from reinf.training.ppo import (
    adaptive_kl_coef,
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    kl_penalty,
    logprobs_from_logits,
    masked_whiten,
    token_rewards,
)


def close(actual, expected, tol=1e-5):
    assert torch.allclose(torch.as_tensor(actual, dtype=torch.float32), torch.tensor(expected), atol=tol), (
        actual
    )


def test_logprobs_from_logits_picks_the_token():
    # softmax([0, ln 3]) = [1/4, 3/4]
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, math.log(3.0)]]])
    close(logprobs_from_logits(logits, torch.tensor([[1, 0]])), [[math.log(0.75), math.log(0.25)]])


def test_kl_penalty_estimators():
    lp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    close(kl_penalty(lp, ref, "k1"), [math.log(2)])  # log 0.5 − log 0.25 = ln 2
    close(kl_penalty(lp, ref, "k3"), [-0.5 + math.log(2)])  # ρ = 0.25/0.5 → (ρ − 1) − ln ρ
    close(kl_penalty(lp, ref, "mse"), [0.5 * math.log(2) ** 2])
    # Where the policy is less likely than the reference, k1 goes negative but k3 stays positive: ρ = 2.
    close(kl_penalty(ref, lp, "k1"), [-math.log(2)])
    close(kl_penalty(ref, lp, "k3"), [1.0 - math.log(2)])
    with pytest.raises(ValueError, match="k1, k3 or mse"):
        kl_penalty(lp, ref, "k2")


def test_token_rewards_put_the_score_on_the_last_real_token():
    score = torch.tensor([1.0, 2.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.7, 0.7]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    # row 0: −0.5·[0.1, 0.2, 0.3] + [0, 0, 1]; row 1: −0.5·0.4 + 2, padding gets nothing
    close(token_rewards(score, kl, 0.5, mask), [[-0.05, -0.1, 0.85], [1.8, 0.0, 0.0]])


def test_gae_undiscounted():
    # γ = 1, λ = 0.95, V = [0.5, 0.6, 0.7], r = [0, 0, 1]
    # δ2 = 1 − 0.7 = 0.3                 A2 = 0.3
    # δ1 = 0 + 0.7 − 0.6 = 0.1           A1 = 0.1 + 0.95·0.3 = 0.385
    # δ0 = 0 + 0.6 − 0.5 = 0.1           A0 = 0.1 + 0.95·0.385 = 0.46575
    adv, ret = gae(
        torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.6, 0.7]]), torch.ones(1, 3), 1.0, 0.95
    )
    close(adv, [[0.46575, 0.385, 0.3]])
    close(ret, [[0.96575, 0.985, 1.0]])


def test_gae_discounted_with_padding():
    # γ = 0.9, λ = 0.5; the third token is padding, whose value (9) must not leak in.
    # A2 = 0 (padding)
    # δ1 = 2 + 0 − 1 = 1 (the response ends here)   A1 = 1
    # δ0 = 1 + 0.9·1 − 0.5 = 1.4                     A0 = 1.4 + 0.9·0.5·1 = 1.85
    rewards = torch.tensor([[1.0, 2.0, 0.0]])
    values = torch.tensor([[0.5, 1.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    adv, ret = gae(rewards, values, mask, 0.9, 0.5)
    close(adv, [[1.85, 1.0, 0.0]])
    close(ret, [[2.35, 2.0, 0.0]])


def test_clipped_policy_loss_is_pessimistic_and_masked():
    # token 0: ρ = 1.5, A = 2   → max(−3, −1.2·2) = −2.4 (clipped)
    # token 1: ρ = 0.5, A = −1  → max(0.5, 0.8) = 0.8   (clipped)
    # token 2: ρ = 1.1, A = 1   → max(−1.1, −1.1) = −1.1 (inside the clip)
    # token 3: padding with absurd numbers
    old = torch.zeros(1, 4)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1, 50.0]])).requires_grad_(True)
    adv = torch.tensor([[2.0, -1.0, 1.0, 1000.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    loss, clipfrac, approx_kl = clipped_policy_loss(new, old, adv, mask, 0.2)
    close(loss, (-2.4 + 0.8 - 1.1) / 3)
    close(clipfrac, 2 / 3)
    # k3 estimate of KL(π_old ‖ π_θ) per token: (ρ − 1) − ln ρ → 0.094535, 0.193147, 0.004690
    close(approx_kl, (0.094535 + 0.193147 + 0.004690) / 3)
    loss.backward()
    # The clipped tokens give no gradient; the free one gives −A·ρ / 3 (d/dlogπ of −A·exp(logπ − logπ_old)).
    close(new.grad, [[0.0, 0.0, -1.1 / 3, 0.0]])


def test_clipped_value_loss():
    old, ret = torch.tensor([[1.0]]), torch.tensor([[3.0]])
    one = torch.ones(1, 1)
    # V = 2: unclipped (2 − 3)² = 1, clipped (1.2 − 3)² = 3.24 → ½·3.24
    close(clipped_value_loss(torch.tensor([[2.0]]), old, ret, one, 0.2), 1.62)
    # V = 1.1 stays inside the clip: ½ (1.1 − 3)² = 1.805
    close(clipped_value_loss(torch.tensor([[1.1]]), old, ret, one, 0.2), 1.805)
    # V = 0.5 moved away from the return: unclipped 6.25 beats clipped (0.8 − 3)² = 4.84 → 3.125
    close(clipped_value_loss(torch.tensor([[0.5]]), old, ret, one, 0.2), 3.125)


def test_adaptive_kl_coef():
    # KL/target − 1 = 0.5, clipped to 0.2: β·(1 + 0.2·8/80) = 0.102
    assert adaptive_kl_coef(0.1, 9.0, 6.0, 8, 80) == pytest.approx(0.102)
    # −0.5 clipped to −0.2: 0.1·(1 − 0.02) = 0.098
    assert adaptive_kl_coef(0.1, 3.0, 6.0, 8, 80) == pytest.approx(0.098)
    # 0.1 inside the clip: 0.1·(1 + 0.01) = 0.101
    assert adaptive_kl_coef(0.1, 6.6, 6.0, 8, 80) == pytest.approx(0.101)


def test_masked_whiten_ignores_padding():
    # mean of [1, 2, 3] = 2, variance 2/3
    out = masked_whiten(torch.tensor([[1.0, 2.0, 3.0, 100.0]]), torch.tensor([[1.0, 1.0, 1.0, 0.0]]))
    s = math.sqrt(1.5)
    close(out, [[-s, 0.0, s, 0.0]], tol=1e-4)
