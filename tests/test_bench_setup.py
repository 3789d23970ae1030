"""The learning benchmark measures what ships: its prompts, its settings, and the README's table of results."""

from __future__ import annotations

import json

import pytest

from bench import learning, results_table
from bench.prompts import HELD_IN, HELD_OUT, near
from reinf.training.data import REPLAY_CHAT, REPLAY_CODE


def test_no_held_out_prompt_is_near_a_replayed_or_rated_one():
    assert len(HELD_OUT) >= 20 and not set(HELD_OUT) & set(HELD_IN)
    for prompt in HELD_OUT:
        close = [q for q in REPLAY_CHAT + REPLAY_CODE + HELD_IN if near(prompt, q)]
        assert not close, (prompt, close)


def test_near_catches_the_rewordings_that_leaked_before():
    assert near("Write a Python function that counts the words in a text.",
                "Write a function that counts the words in a text.")  # fmt: skip
    assert near("Write a Python function that reads a file line by line.", "def read_lines(path):\n    ")
    assert not near("Write a Python function that transposes a matrix.", "How do I parse JSON in Python?")


def test_the_benchmark_runs_the_shipped_defaults():
    plan = learning.Plan()
    assert plan.overrides == {}
    assert set(learning.BUDGET) <= learning.BUDGET_KEYS  # only what changes speed, not what is learned
    assert set(plan.tastes) == {"concise", "no_print", "type_hints", "short_docstring", "commented"}
    assert len(plan.seeds) >= 3 and plan.ratings == 200
    assert plan.eval_samples * len(HELD_OUT) >= 174  # answers per measurement


def test_the_readme_table_is_the_one_the_results_make():
    readme = results_table.README.read_text()
    assert results_table.with_table(readme, results_table.table()) == readme, (
        "README.md's results table is stale: run python bench/results_table.py --write"
    )


def test_a_learning_result_with_overrides_never_reaches_the_table(tmp_path):
    result = {"overrides": {"training_learning_rate": "0.002"}, "gain_points": 50.0}
    (tmp_path / "learning.json").write_text(json.dumps(result))
    row = next(line for line in results_table.table(tmp_path).splitlines() if line.startswith("| learning"))
    assert "not yet measured with the shipped defaults" in row and "50" not in row


def _user(taste: str, seed: int, before: list[float], after: list[float], state: str = "published") -> dict:
    """A user's result as bench/learning.py's one_user leaves it, from per-prompt satisfied shares."""
    base = {"satisfaction": sum(before) / len(before), "per_prompt": before, "se": 0.0}
    end = {"satisfaction": sum(after) / len(after), "per_prompt": after, "se": 0.0}
    gain = learning.paired_gain(end, base)
    run = {"state": state}
    curve = [{"ratings": 0, "run": None, **base}, {"ratings": 50, "run": run, **end}]
    change = learning.paired_gain(end, base)
    return {"taste": taste, "seed": seed, "curve": curve, "gain": gain, "gain_points": gain["points"],
            "satisfaction_before": base["satisfaction"], "satisfaction_after": end["satisfaction"],
            "general_loss_change_pct": 1.0, "base_ever_satisfies": base["satisfaction"] > 0,
            "published_regressions": [50] if state == "published" and change["points"] < -change["se"] else []}  # fmt: skip


def test_the_summary_leaves_out_tastes_the_base_never_satisfies_and_counts_regressions(capsys, tmp_path):
    users = [
        _user("concise", 0, [0, 0, 1, 0], [1, 1, 1, 0]),  # +50 points
        _user("commented", 0, [1, 1, 1, 0], [0, 0, 1, 0]),  # a published regression: −50
        _user("type_hints", 0, [0, 0, 0, 0], [0, 0, 0, 0]),  # the base never satisfies it
    ]
    plan = learning.Plan(tastes=["concise", "commented", "type_hints"], seeds=[0], baselines=False)
    summary = learning.summarise(users, plan)
    assert summary["left_out"] == ["type_hints"] and summary["spread"]["users"] == 2
    assert summary["gain_points"] == 0.0 and summary["published_regressions"] == 1
    assert not summary["targets"]["no_published_regressions"] and summary["overrides"] == {}
    assert summary["per_taste"]["type_hints"]["base_ever_satisfies"] is False
    learning.report(summary, tmp_path / "x.json", tmp_path / "x.png", 60.0)
    out = capsys.readouterr().out
    assert "left out, the base never satisfies: type_hints" in out and "MISSED" in out


def test_the_house_style_project_has_enough_files_for_the_default_completion_benchmark():
    from bench.house_style import NOUNS, generate

    files = generate(0, 12)  # bench/completions.py's default: 10 to learn from, 2 held out
    modules = [name for name in files if name != "errors.py"]
    assert len(modules) == 12 and len(set(files.values())) == 13
    # A project of up to len(NOUNS) files is drawn from NOUNS alone, as before the extra nouns.
    assert {name.removesuffix("s.py") for name in generate(0, 10) if name != "errors.py"} == set(NOUNS)
    with pytest.raises(ValueError, match="n_files"):
        generate(0, 17)


def test_a_completion_regression_is_a_fall_of_more_than_one_standard_error():
    from bench import completions

    a, b = {"acceptance_rate": 0.25, "shown": 120}, {"acceptance_rate": 0.22, "shown": 125}
    se = completions.change_se(a, b)
    assert se == pytest.approx(((0.25 * 0.75 / 120) + (0.22 * 0.78 / 125)) ** 0.5)
    assert a["acceptance_rate"] - b["acceptance_rate"] < se  # 3 points on ~120 suggestions: within the noise
    c = {"acceptance_rate": 0.10, "shown": 120}
    assert a["acceptance_rate"] - c["acceptance_rate"] > completions.change_se(a, c)


def test_one_pleasing_answer_in_189_is_noise_not_a_taste_the_base_meets():
    # type_hints as measured: 1 of 189 held-out answers pleased (share = its standard error), 1 of 50 liked.
    one = {"satisfaction": 1 / 189, "se": 1 / 189}
    assert not learning.base_ever_satisfies(
        [{"ratings": 0, **one}, {"ratings": 50, "liked_share_of_rated": 0.02}]
    )
    # The least-met taste kept in the mean: 11.1% ± 2.7.
    assert learning.base_ever_satisfies([{"ratings": 0, "satisfaction": 0.111, "se": 0.027}])
    # Held-out answers at zero, but the first ratings liked 10 of 50: the base does meet it sometimes.
    zero = {"ratings": 0, "satisfaction": 0.0, "se": 0.0}
    assert learning.base_ever_satisfies([zero, {"ratings": 50, "liked_share_of_rated": 0.2}])
    assert not learning.base_ever_satisfies([zero, {"ratings": 50, "liked_share_of_rated": 0.0}])
