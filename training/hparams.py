"""The learning settings that depend on the model: derived from its size here, and nowhere else.

A LoRA learning rate that moves a 5M-parameter model in a dozen PPO steps wrecks a 0.5B one. The update a LoRA
step makes to a layer's output grows with the layer's width, so the rate falls in proportion to the hidden size
(as μP scales hidden-layer rates), from the rates measured on reinf-tiny (hidden size 256) by bench/learning.py:

    rate = rate at 256 × 256 / hidden size, within [MIN_RATE, the rate at 256]

which gives, for PPO and the KTO warm start: reinf-tiny (256) 2e-3 and 5e-4; SmolLM2-135M (576) 8.9e-4 and
2.2e-4; Qwen2.5-Coder-0.5B (896) 5.7e-4 and 1.4e-4; a 7B model (4096) 1.25e-4 and 3.1e-5. The completions' DPO
has its own rate, 2e-3 at 256 with the same scaling (8.9e-4, 5.7e-4, 1.25e-4). A rate set in the config (not 0)
is used as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from reinf.config import TrainingConfig

REFERENCE_HIDDEN = 256  # reinf-tiny, where the rates below were measured
PPO_RATE_AT_REFERENCE = 2e-3
WARM_START_RATE_AT_REFERENCE = 5e-4
COMPLETION_RATE_AT_REFERENCE = 2e-3
MIN_RATE = 1e-5


def scaled_rate(rate_at_reference: float, hidden_size: int) -> float:
    """`rate_at_reference` scaled by REFERENCE_HIDDEN / hidden_size, never above it, never below MIN_RATE."""
    if hidden_size <= 0:
        raise ValueError(f"hidden size must be positive, got {hidden_size}")
    return max(MIN_RATE, min(rate_at_reference, rate_at_reference * REFERENCE_HIDDEN / hidden_size))


@dataclass(frozen=True)
class LearningRates:
    ppo: float
    warm_start: float
    completions: float
    derived_from_hidden_size: int

    def as_metrics(self) -> dict[str, float | int]:
        return {
            "ppo": self.ppo,
            "warm_start": self.warm_start,
            "completions": self.completions,
            "hidden_size": self.derived_from_hidden_size,
        }


def learning_rates(cfg: TrainingConfig, hidden_size: int) -> LearningRates:
    """The rates a run uses: the configured ones, or (where 0) the ones derived from `hidden_size`."""
    return LearningRates(
        ppo=cfg.learning_rate or scaled_rate(PPO_RATE_AT_REFERENCE, hidden_size),
        warm_start=cfg.warm_start_learning_rate or scaled_rate(WARM_START_RATE_AT_REFERENCE, hidden_size),
        completions=cfg.completion_learning_rate or scaled_rate(COMPLETION_RATE_AT_REFERENCE, hidden_size),
        derived_from_hidden_size=hidden_size,
    )
