"""Configuration: defaults, then `$REINF_HOME/config.toml`, then `REINF_<SECTION>_<KEY>`, then CLI flags."""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .paths import UnsafePath, check_home, read_private_file, reinf_home


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
    temperature: float = 0.2  # inline completions
    chat_temperature: float = 0.8  # chat and %%ask, unless the request says otherwise
    max_context_tokens: int = 1024
    inference_threads: int = 1
    # Sampling seed: -1 draws fresh randomness; 0 or more makes the daemon's answers reproducible (the same
    # requests in the same order get the same answers), for tests and benchmarks.
    seed: int = -1
    # Who generates: "local" (this process) or "vllm" (a vLLM OpenAI-compatible server, vllm.py). vllm_url
    # empty: the daemon starts `vllm_command serve` itself on 127.0.0.1, with vllm_args added (such as
    # "--tensor-parallel-size 2"); vllm_command empty is `vllm` on PATH, else this checkout's .venv-vllm.
    backend: str = "local"
    vllm_url: str = ""
    vllm_api_key: str = ""  # for a server at vllm_url started with --api-key
    vllm_command: str = ""
    vllm_args: str = ""
    vllm_start_timeout_s: float = 900.0


@dataclass
class TrainingConfig:
    """What a run learns and how. These defaults are what bench/learning.py measures; the learning rates follow
    the model's size (`reinf.training.hparams`) unless set."""

    min_new_ratings: int = 32  # rated answers since the last run that start the next one
    # Inline suggestions accepted, typed through or dismissed since the last run started that start the next
    # one (what the user did with them teaches the policy; see training/run.py). 0: never.
    min_new_completions: int = 200
    batch_size: int = 16  # PPO rollouts per step
    minibatch_size: int = 8
    ppo_epochs: int = 2
    ppo_steps: int = 12
    learning_rate: float = 0.0  # PPO's LoRA learning rate; 0: derived from the model's hidden size
    # Before PPO, KTO on the rated answers of the training split, liked and disliked (reference: the policy as
    # the run starts), for warm_start_epochs passes; 0 epochs: none.
    warm_start_epochs: int = 2
    warm_start_learning_rate: float = 0.0  # 0: derived from the model's hidden size
    kto_beta: float = 0.1
    # Completions in the warm start: DPO on what the user wrote or took at the cursor over what they turned down,
    # plus dpo_nll_coef times the preferred text's mean next-token loss (RPO, Pang et al. 2024), so that what
    # they wrote becomes what the model writes there, not only likelier than what it suggested. The completions
    # have their own passes and rate, apart from the rated answers' KTO.
    completion_epochs: int = 6
    # Earlier completions a run goes over again beside the new ones, per new one (drawn at random, capped by how
    # many there are), so that the adapter keeps fitting what the user did before; 0: new ones only.
    completion_replay: int = 2
    completion_learning_rate: float = 0.0  # 0: derived from the model's hidden size
    dpo_beta: float = 0.1
    dpo_nll_coef: float = 1.0
    # ... and this times the per-token KL(base ‖ policy) on general Python in every DPO step, so that learning a
    # project's style leaves the model's predictions on other code where they were (0: off).
    dpo_general_kl_coef: float = 2.0
    # Also a next-token fine-tune on what the user took or wrote at each cursor (the project's names and idioms),
    # with the same KL to the base.
    fim_finetune: bool = False
    ptx_coef: float = (
        0.5  # PPO-ptx: weight of a next-token loss on general Python in every PPO update (0: off)
    )
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    max_prompt_tokens: int = 128
    max_response_tokens: int = 96
    temperature: float = 0.8  # rollouts and the gate's samples
    replay_ratio: float = 0.25
    init_kl_coef: float = 0.2
    target_kl: float = 6.0
    clip_range: float = 0.2
    clip_range_value: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    max_kl: float = 40.0  # nats per answer from the active adapter: one run's step
    max_general_loss_increase: float = 0.05
    # The gate rejects a candidate whose median answer is shorter than half this quantile of the liked answers'
    # lengths: shrinking answers are the commonest way to game a reward model. 0 turns the check off.
    length_floor_quantile: float = 0.1
    # The gate's judge and ratings checks pass a candidate that is at most this many standard errors worse than
    # the active adapter: a noisy measurement rejects an equally good candidate about half the time otherwise.
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
    # New ratings that the saved judge scores with a strongly negative correlation (one-sided permutation
    # p-value under this, on at least reward.MIN_CONTRADICTION ratings) contradict the history: the run stops.
    # 0 turns it off. At 0.05 an honest simulated user was stopped once (p = 0.028).
    contradiction_p: float = 0.01
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
class CompletionsConfig:
    """Where inline completions end (truncate.py) and what is learnt from them."""

    max_lines: int = 8  # most lines of a suggestion made at an empty line
    max_chars: int = 400
    multiline: bool = True  # false: every suggestion is one line
    # Per language id, overriding the two above: "python=12, go=16" (lines) and "python=600" (characters).
    max_lines_by_language: str = ""
    max_chars_by_language: str = ""
    # After a dismissed or partly accepted suggestion, what the user writes there instead is kept as a
    # correction (redacted like all text), for at most this many characters and seconds. false: never kept.
    corrections: bool = True
    correction_max_chars: int = 400
    correction_timeout_s: float = 30.0

    def limits_for(self, language: str | None) -> tuple[int, int]:
        """(max_lines, max_chars) for a language id."""
        lang = (language or "").lower()
        lines = _by_language(self.max_lines_by_language, "completions.max_lines_by_language")
        chars = _by_language(self.max_chars_by_language, "completions.max_chars_by_language")
        return lines.get(lang, self.max_lines), chars.get(lang, self.max_chars)


def _by_language(value: str, where: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in value.replace(";", ",").split(","):
        if not item.strip():
            continue
        lang, sep, number = item.partition("=")
        if not sep or not lang.strip() or not number.strip().isdigit() or int(number) < 1:
            raise ConfigError(
                f'{where} must look like "python=12, go=16" (positive integers), got {item.strip()!r}'
            )
        out[lang.strip().lower()] = int(number)
    return out


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
    completions: CompletionsConfig = field(default_factory=CompletionsConfig)
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
    "REINF_HOME",
    "REINF_CACHE",
    "REINF_DAEMON_PID",  # the trainer's parent
    "REINF_LONG",
    "REINF_FUZZ_SEED",
    "REINF_E2E_DIR",
    "REINF_E2E_SHOTS",  # tests
)

# Keys that changed name; removed ones (training.start_from, warm_start, kl_reference, ptx_data) are unknown keys.
_RENAMED = {
    ("training", "imitation_epochs"): "warm_start_epochs",
    ("training", "imitation_learning_rate"): "warm_start_learning_rate",
}

SECTIONS = ("model", "training", "reward_model", "server", "store", "completions")


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
            if (section, key) in _RENAMED:
                raise ConfigError(f"{section}.{key} in {source} is now {section}.{_RENAMED[section, key]}")
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
    try:
        # the home first: a config planted while it was writable by others must not be obeyed
        check_home(home_path)
        raw = read_private_file(toml_path, "the config")
    except UnsafePath as exc:
        raise ConfigError(str(exc)) from None
    if raw is not None:
        try:
            data = tomllib.loads(_toml_text(raw, toml_path))
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
    _check_ranges(cfg)
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
    if cfg.model.seed < -1:
        raise ConfigError(f"model.seed must be -1 (unseeded) or 0 or more, got {cfg.model.seed}")
    _check_learning_ranges(cfg)
    c = cfg.completions
    c.limits_for("")  # a malformed per-language list is named now, not at the first completion
    for name in ("max_lines", "max_chars", "correction_max_chars"):
        if getattr(c, name) < 1:
            raise ConfigError(f"completions.{name} must be at least 1, got {getattr(c, name)}")
    if c.correction_timeout_s <= 0:
        raise ConfigError(f"completions.correction_timeout_s must be positive, got {c.correction_timeout_s}")
    if cfg.model.device not in ("auto", "cpu", "cuda") and not cfg.model.device.startswith("cuda:"):
        raise ConfigError(f"model.device must be auto, cpu, cuda or cuda:N, got {cfg.model.device!r}")
    from .vllm import check_vllm_config

    check_vllm_config(cfg.model, ConfigError)


# -- the file's encoding, and the ranges of [server] and [model] values ------------------------------------


def _toml_text(raw: bytes, path: Path) -> str:
    """The config's text; TOML is UTF-8, and a file saved as UTF-16 (Windows editors do) says so."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")) or (len(raw) > 1 and b"\x00" in raw[:2]):
        raise ConfigError(f"{path} is UTF-16 text; TOML must be UTF-8: save it as UTF-8")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}); TOML must be UTF-8"
        ) from None


# (section, key): (lowest, highest, what it means). A value outside gets one line naming the key and the range;
# NaN and infinity are refused for every number (nan compares false with any bound, so a check such as
# `auth_timeout_s <= 0` let it through and turned the timeout off).
_RANGES: dict[tuple[str, str], tuple[float, float, str]] = {
    ("server", "port"): (0, 65_535, "0 picks a free port"),
    ("server", "max_field_bytes"): (1, 1 << 30, "bytes"),
    ("server", "max_message_bytes"): (1024, 1 << 30, "bytes; below 1 KiB no request fits"),
    ("server", "auth_timeout_s"): (0.01, 3600.0, "seconds"),
    ("server", "history_limit_max"): (1, 100_000, "items"),
    ("model", "max_new_tokens"): (1, 4096, "tokens"),
    ("model", "chat_max_new_tokens"): (1, 4096, "tokens"),
    ("model", "temperature"): (0.0, 2.0, "0 is greedy"),
    ("model", "max_context_tokens"): (16, 1 << 20, "tokens"),
    ("model", "inference_threads"): (1, 1024, "threads"),
    ("model", "vllm_start_timeout_s"): (1.0, 86_400.0, "seconds"),
}
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _check_ranges(cfg: Config) -> None:
    """Every number finite, the [server] and [model] numbers in range, the log level a known one."""
    for section in SECTIONS:
        for f in fields(getattr(cfg, section)):
            value = getattr(getattr(cfg, section), f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{section}.{f.name} must be a finite number, got {value}")
    for (section, key), (low, high, unit) in _RANGES.items():
        value = getattr(getattr(cfg, section), key)
        if not low <= value <= high:
            kind, num = ("an integer", str) if isinstance(value, int) else ("a number", lambda v: f"{v:g}")
            raise ConfigError(
                f"{section}.{key} must be {kind} from {num(low)} to {num(high)} ({unit}), got {num(value)}"
            )
    s = cfg.server
    if s.max_field_bytes > s.max_message_bytes:
        raise ConfigError(
            f"server.max_field_bytes ({s.max_field_bytes}) must not exceed server.max_message_bytes "
            f"({s.max_message_bytes}): a field that large could never arrive"
        )
    if s.log_level.upper() not in _LOG_LEVELS:
        raise ConfigError(f"server.log_level must be one of {', '.join(_LOG_LEVELS)}, got {s.log_level!r}")
    s.log_level = s.log_level.upper()


# The allowed range of each learning setting: (lowest, highest, whether the lowest itself is allowed).
_LEARNING_RANGES: dict[str, dict[str, tuple[float, float, bool]]] = {
    "training": {
        "min_new_ratings": (1, 1e9, True),
        "min_new_completions": (0, 1e9, True),
        "batch_size": (1, 4096, True),
        "minibatch_size": (1, 4096, True),
        "ppo_epochs": (1, 100, True),
        "ppo_steps": (0, 10_000, True),
        "learning_rate": (0, 1, True),
        "warm_start_epochs": (0, 100, True),
        "warm_start_learning_rate": (0, 1, True),
        "completion_epochs": (0, 100, True),
        "completion_replay": (0, 100, True),
        "completion_learning_rate": (0, 1, True),
        "kto_beta": (0, 100, False),
        "dpo_beta": (0, 100, False),
        "dpo_nll_coef": (0, 100, True),
        "dpo_general_kl_coef": (0, 100, True),
        "ptx_coef": (0, 100, True),
        "lora_r": (1, 1024, True),
        "lora_alpha": (0, 1e6, False),
        "lora_dropout": (0, 1, True),
        "max_prompt_tokens": (1, 1e6, True),
        "max_response_tokens": (1, 1e6, True),
        "temperature": (0, 10, False),
        "replay_ratio": (0, 0.999, True),
        "init_kl_coef": (0, 1e3, True),
        "target_kl": (0, 1e6, False),
        "clip_range": (0, 10, False),
        "clip_range_value": (0, 1e6, False),
        "vf_coef": (0, 1e3, True),
        "gamma": (0, 1, True),
        "lam": (0, 1, True),
        "max_kl": (0, 1e9, False),
        "max_general_loss_increase": (0, 100, True),
        "length_floor_quantile": (0, 0.999, True),
        "gate_tolerance_se": (0, 100, True),
        "eval_prompts": (1, 10_000, True),
        "threads": (1, 1024, True),
        "nice": (0, 19, True),
        "seed": (0, 2**32 - 1, True),
        "timeout_s": (1, 1e9, True),
    },
    "reward_model": {
        "learning_rate": (0, 1, False),
        "epochs": (1, 1000, True),
        "batch_size": (1, 4096, True),
        "lora_r": (1, 1024, True),
        "min_new_ratings": (1, 1e9, True),
        "holdout_fraction": (0, 0.9, False),
        "min_holdout_correlation": (-1, 1, True),
        "contradiction_p": (0, 1, True),
        "max_length": (8, 1e6, True),
        "implicit_weight": (0, 1, True),
    },
}


def _check_learning_ranges(cfg: Config) -> None:
    """A learning setting out of its range (a negative rate, 0 PPO epochs, NaN) stops start-up, naming the key."""
    for section, ranges in _LEARNING_RANGES.items():
        obj = getattr(cfg, section)
        for key, (lo, hi, lo_ok) in ranges.items():
            value = getattr(obj, key)
            ok = math.isfinite(value) and (lo <= value if lo_ok else lo < value) and value <= hi
            if not ok:
                low = f"{'at least' if lo_ok else 'more than'} {lo:g}"
                raise ConfigError(f"{section}.{key} must be {low} and at most {hi:g}, got {value!r}")
