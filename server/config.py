"""Configuration: defaults, then `$REINF_HOME/config.toml`, then `REINF_<SECTION>_<KEY>`, then CLI flags."""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .paths import reinf_home


class ConfigError(ValueError):
    """A config key that does not exist, or a value of the wrong type."""


@dataclass
class ModelConfig:
    name: str = "reinf-tiny"  # a hub id, a local folder, or "reinf-tiny" (built locally)
    tokenizer: str = ""  # defaults to the model's own
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    fim_template: str = "auto"  # auto | qwen | starcoder | deepseek | codellama | reinf
    trust_remote_code: bool = False
    max_new_tokens: int = 64
    chat_max_new_tokens: int = 256
    temperature: float = 0.2
    max_context_tokens: int = 1024
    inference_threads: int = 1
    # Sampling seed: -1 draws fresh randomness; 0 or more makes the daemon's answers reproducible (the same
    # requests in the same order get the same answers), for tests and benchmarks.
    seed: int = -1


@dataclass
class TrainingConfig:
    min_new_ratings: int = 32
    batch_size: int = 8
    minibatch_size: int = 4
    ppo_epochs: int = 4
    ppo_steps: int = 8
    learning_rate: float = 1e-4
    start_from: str = "active"  # each run's policy starts as the "active" adapter, or as a fresh one ("base")
    # Before PPO, a warm start on the rated answers: "imitate" the liked ones (next-token loss), or "kto" on
    # liked and disliked ones (KTO's loss, reference: the policy as the run starts), for imitation_epochs.
    warm_start: str = "kto"
    imitation_epochs: int = 1  # passes of the warm start over the training split's answers (0: none)
    imitation_learning_rate: float = 1e-4
    kto_beta: float = 0.1
    ptx_coef: float = 0.5  # PPO-ptx: weight of a next-token loss mixed into every PPO update (0: off)
    ptx_data: str = "general"  # ... on "general" Python (InstructGPT's choice) or on the "liked" answers
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    max_prompt_tokens: int = 128
    max_response_tokens: int = 48
    temperature: float = 1.0
    replay_ratio: float = 0.25
    init_kl_coef: float = 0.05
    kl_reference: str = "start"  # PPO's KL penalty is to "start" (the policy as PPO begins) or to "base"
    target_kl: float = 6.0
    clip_range: float = 0.2
    clip_range_value: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    max_kl: float = 15.0
    max_general_loss_increase: float = 0.05
    # The gate rejects a candidate whose median answer is shorter than half this quantile of the liked answers'
    # lengths: shrinking answers are the commonest way to game a reward model. 0 turns the check off.
    length_floor_quantile: float = 0.1
    # The judge's check passes a candidate whose mean score on the held-out prompts is at most this many standard
    # errors (of the per-prompt differences) below the active adapter's: a noisy judge rejects a candidate that is
    # as good about half the time otherwise. 0: the candidate must score at least as high.
    gate_tolerance_se: float = 1.0
    eval_prompts: int = 16
    threads: int = 1
    nice: int = 10
    seed: int = 0
    timeout_s: int = 3600


@dataclass
class RewardModelConfig:
    name: str = "policy"  # "policy" (the base + its own LoRA and a score head) or any sequence classifier
    learning_rate: float = 3e-4
    epochs: int = 4
    batch_size: int = 8
    lora_r: int = 8
    min_new_ratings: int = 16
    holdout_fraction: float = 0.2
    min_holdout_correlation: float = 0.0
    # New ratings that the judge trained on the earlier ones scores with a significantly negative correlation
    # (one-sided permutation p-value under this) contradict the history: the run stops. 0 turns it off. An
    # honest user's new ratings correlate positively with their old judge. At 0.05 the learning benchmark saw one
    # false alarm (p = 0.028) on an honest user at 95% satisfaction, where the stars left vary by noise; at 0.01
    # tests/test_faults.py's 64 inverted ratings got through once (the benchmark, whose users are honest, uses 0.01).
    contradiction_p: float = 0.05
    max_length: int = 256
    implicit_weight: float = 0.2


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 0
    allow_remote: bool = False
    max_field_bytes: int = 256 * 1024
    max_message_bytes: int = 4 * 1024 * 1024
    # An open document past this is refused (no completions in it): what a completion costs must not grow with
    # the file, and a completion reads only a window around the cursor anyway.
    max_document_bytes: int = 1024 * 1024
    auth_timeout_s: float = 10.0  # a connection that shows no token by then is closed
    history_limit_max: int = 500
    redact_secrets: bool = True
    log_level: str = "INFO"


@dataclass
class StoreConfig:
    encryption_key: str = ""  # non-empty asks DuckDB for encryption at rest (refused where insecure)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    home: Path = field(default_factory=reinf_home)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain TOML-able data (the trainer gets this in its run folder)."""
        out = {f.name: dataclasses.asdict(getattr(self, f.name)) for f in fields(self) if f.name != "home"}
        out["home"] = str(self.home)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Rebuild a config written by `to_dict`, checking every key and type."""
        cfg = cls(home=Path(data.get("home", reinf_home())))
        for section, values in data.items():
            if section == "home":
                continue
            _apply_section(cfg, section, values, source="config data")
        return cfg


# REINF_* variables that are not config keys. Without the test switches here, every daemon, kernel and CLI
# started under `make test-long` stopped with "unknown environment variable REINF_LONG".
NOT_CONFIG = (
    "REINF_HOME", "REINF_CACHE", "REINF_DAEMON_PID",  # the trainer's parent
    "REINF_LONG", "REINF_FUZZ_SEED", "REINF_E2E_DIR", "REINF_E2E_SHOTS",  # tests
)  # fmt: skip

SECTIONS = ("model", "training", "reward_model", "server", "store")


def _coerce(value: Any, typ: type, where: str) -> Any:
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if typ is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where} must be a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {typ}")  # pragma: no cover


_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def _apply_section(cfg: Config, section: str, values: Any, source: str) -> None:
    if section not in SECTIONS:
        raise ConfigError(f"unknown config section [{section}] in {source}; known: {', '.join(SECTIONS)}")
    if not isinstance(values, dict):
        raise ConfigError(f"[{section}] in {source} must be a table")
    obj = getattr(cfg, section)
    known = {f.name: f for f in fields(obj)}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(
                f"unknown config key {section}.{key} in {source}; known keys: {', '.join(sorted(known))}"
            )
        typ = _TYPES[known[key].type] if isinstance(known[key].type, str) else known[key].type
        setattr(obj, key, _coerce(value, typ, f"{section}.{key} ({source})"))


def load_config(
    home: Path | str | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    environ: dict[str, str] | None = None,
) -> Config:
    """Load the config for `home`: defaults < config.toml < REINF_<SECTION>_<KEY> < overrides (CLI flags)."""
    env = os.environ if environ is None else environ
    home_path = Path(home) if home is not None else reinf_home(env)
    cfg = Config(home=home_path)
    toml_path = home_path / "config.toml"
    if toml_path.exists():
        try:
            data = tomllib.loads(toml_path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{toml_path} is not valid TOML: {exc}") from exc
        for section, values in data.items():
            _apply_section(cfg, section, values, source=str(toml_path))
    for name, value in env.items():
        if not name.startswith("REINF_") or name in NOT_CONFIG:
            continue
        rest = name[len("REINF_") :].lower()
        for section in sorted(SECTIONS, key=len, reverse=True):
            if rest.startswith(section + "_"):
                _apply_section(cfg, section, {rest[len(section) + 1 :]: value}, source=f"environment {name}")
                break
        else:
            raise ConfigError(f"unknown environment variable {name}: no config section matches")
    for section, values in (overrides or {}).items():
        _apply_section(cfg, section, values, source="command-line flags")
    _validate(cfg)
    return cfg


def _validate(cfg: Config) -> None:
    s = cfg.server
    if s.host not in ("127.0.0.1", "localhost", "::1") and not s.allow_remote:
        raise ConfigError(
            f"server.host = {s.host!r} is not a loopback address; reinf serves only this machine. "
            "Set server.allow_remote = true to bind it anyway (not recommended)."
        )
    if s.auth_timeout_s <= 0:
        raise ConfigError(f"server.auth_timeout_s must be positive, got {s.auth_timeout_s}")
    if s.max_field_bytes <= 0:
        raise ConfigError(f"server.max_field_bytes must be positive, got {s.max_field_bytes}")
    if s.max_document_bytes <= 0:
        raise ConfigError(f"server.max_document_bytes must be positive, got {s.max_document_bytes}")
    t = cfg.training
    if t.min_new_ratings < 1:
        raise ConfigError(f"training.min_new_ratings must be at least 1, got {t.min_new_ratings}")
    if t.start_from not in ("active", "base"):
        raise ConfigError(f"training.start_from must be active or base, got {t.start_from!r}")
    if not 0.0 <= t.length_floor_quantile < 1.0:
        raise ConfigError(f"training.length_floor_quantile must be in [0, 1), got {t.length_floor_quantile}")
    if t.kl_reference not in ("start", "base"):
        raise ConfigError(f"training.kl_reference must be start or base, got {t.kl_reference!r}")
    if cfg.model.seed < -1:
        raise ConfigError(f"model.seed must be -1 (unseeded) or 0 or more, got {cfg.model.seed}")
    if t.warm_start not in ("imitate", "kto"):
        raise ConfigError(f"training.warm_start must be imitate or kto, got {t.warm_start!r}")
    if t.kto_beta <= 0:
        raise ConfigError(f"training.kto_beta must be positive, got {t.kto_beta}")
    if t.ptx_data not in ("general", "liked"):
        raise ConfigError(f"training.ptx_data must be general or liked, got {t.ptx_data!r}")
    if t.ptx_coef < 0:
        raise ConfigError(f"training.ptx_coef must be 0 or more, got {t.ptx_coef}")
    if t.gate_tolerance_se < 0:
        raise ConfigError(f"training.gate_tolerance_se must be 0 or more, got {t.gate_tolerance_se}")
    if t.imitation_epochs < 0:
        raise ConfigError(f"training.imitation_epochs must be 0 or more, got {t.imitation_epochs}")
    if not 0.0 <= t.replay_ratio < 1.0:
        raise ConfigError(f"training.replay_ratio must be in [0, 1), got {t.replay_ratio}")
    if cfg.model.device not in ("auto", "cpu", "cuda") and not cfg.model.device.startswith("cuda:"):
        raise ConfigError(f"model.device must be auto, cpu, cuda or cuda:N, got {cfg.model.device!r}")
