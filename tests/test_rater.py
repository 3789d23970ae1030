"""The learning benchmark's simulated user: each taste rates the answers it should like above those it should not."""

from __future__ import annotations

import pytest

from bench.rater import (
    TASTES,
    Rater,
    code_lines,
    code_of,
    docstring_lines,
    has_comment,
    has_function,
    has_print,
    has_type_hints,
    is_finished,
    satisfaction,
)


def fenced(code: str, closed: bool = True) -> str:
    return "```python\n" + code.strip("\n") + "\n" + ("```" if closed else "")


SHORT = fenced('def rev(s: str) -> str:\n    """Reverse s."""\n    return s[::-1]')
LONG = fenced("def rev(s):\n" + "".join(f"    x{i} = s[{i}]\n" for i in range(20)) + "    return s[::-1]")
PRINTS = fenced("def rev(s):\n    print(s)\n    return s[::-1]")
UNTYPED = fenced("def rev(s):\n    return s[::-1]")
RAMBLING_DOC = fenced(
    'def rev(s):\n    """Reverse.\n\n    Long text.\n    More.\n    More.\n    """\n    return s'
)
CUT_OFF = fenced("def rev(s):\n    return s[::-1]", closed=False)
COMMENTED = fenced("def rev(s):\n    # slicing with a step of -1 walks backwards\n    return s[::-1]")
EMPTY = fenced("")
NO_FUNCTION = fenced("x = 1")


def stars(taste: str, text: str) -> int:
    return Rater(taste, noise=0.0).stars("Write a function that reverses a string.", text)


def test_features_read_the_code_not_the_prose():
    assert code_of("Here you go:\n" + SHORT + "\nHope it helps.").startswith("def rev")
    assert code_lines(SHORT) == 3 and code_lines(LONG) == 22
    assert is_finished(SHORT) and not is_finished(CUT_OFF)
    assert has_print(PRINTS) and not has_print(SHORT)
    assert not has_print(fenced("def f(h):\n    return h.fingerprint(1) + self.print_all()"))
    assert has_type_hints(SHORT) and not has_type_hints(UNTYPED)
    assert not has_type_hints(fenced('def f(x):\n    return "-> not a hint"'))
    assert (
        docstring_lines(SHORT) == 1 and docstring_lines(UNTYPED) == 0 and docstring_lines(RAMBLING_DOC) == 6
    )
    assert has_function(fenced("def m space(a):\n    return a")) and not has_function(NO_FUNCTION)
    assert has_comment(COMMENTED) and not has_comment(fenced('def f():\n    return "# not a comment"'))


@pytest.mark.parametrize("taste", sorted(TASTES))
def test_an_answer_without_a_function_pleases_no_one(taste):
    # The shortest answer of all is an empty one: a taste for brevity must not reward it.
    assert stars(taste, EMPTY) == 1 and stars(taste, NO_FUNCTION) == 1


def test_concise_likes_short_finished_answers():
    assert stars("concise", SHORT) == 5
    assert stars("concise", LONG) == 1
    assert stars("concise", CUT_OFF) <= 2  # short, but cut off at the token limit


def test_no_print_dislikes_print_debugging():
    assert stars("no_print", PRINTS) == 1
    assert stars("no_print", UNTYPED) >= 4
    assert stars("no_print", CUT_OFF) < 4


def test_type_hints_wants_a_return_annotation():
    assert stars("type_hints", SHORT) == 5
    assert stars("type_hints", UNTYPED) <= 2
    assert stars("type_hints", "") == 1


def test_short_docstring_prefers_one_line():
    assert stars("short_docstring", SHORT) == 5
    assert stars("short_docstring", UNTYPED) == 2
    assert stars("short_docstring", RAMBLING_DOC) == 1
    two_lines = fenced('def rev(s):\n    """Reverse s,\n    a string."""\n    return s[::-1]')
    assert stars("short_docstring", two_lines) == 4


def test_commented_likes_comments():
    assert stars("commented", COMMENTED) == 5
    assert stars("commented", SHORT) == 2


def test_every_taste_separates_some_answer_it_likes_from_one_it_does_not():
    answers = [SHORT, LONG, PRINTS, UNTYPED, RAMBLING_DOC, CUT_OFF, COMMENTED]
    for taste in TASTES:
        given = [stars(taste, a) for a in answers]
        assert max(given) >= 4 and min(given) <= 2, (taste, given)


def test_noise_is_repeatable_and_about_as_often_as_asked():
    rater = Rater("concise", seed=3, noise=0.15)
    answers = [fenced(f"def f{i}(x):\n    return x + {i}") for i in range(2000)]
    given = [rater.stars("p", a) for a in answers]
    assert given == [rater.stars("p", a) for a in answers]  # the same answer gets the same rating
    off = sum(g != rater.true_stars(a) for g, a in zip(given, answers, strict=True))
    # true stars are 5 here, so only the downward half of the noise shows: about 7.5 %
    assert 0.05 < off / len(answers) < 0.10
    assert given != [Rater("concise", seed=4, noise=0.15).stars("p", a) for a in answers]


def test_noise_moves_a_rating_by_one_star_within_1_to_5():
    rater = Rater("short_docstring", noise=1.0)
    for a in (SHORT, UNTYPED, RAMBLING_DOC):
        for p in ("a", "b", "c", "d"):
            s = rater.stars(p, a)
            assert 1 <= s <= 5 and abs(s - rater.true_stars(a)) <= 1
    assert any(rater.stars(p, UNTYPED) != 2 for p in "abcd")


def test_satisfaction_is_the_share_rated_four_or_more():
    rater = Rater("concise", noise=0.0)
    replies = iter([SHORT, LONG, SHORT, LONG, LONG, LONG])
    result = satisfaction(rater, lambda p: next(replies), ["a", "b", "c"], samples=2)
    assert result["n"] == 6 and result["satisfaction"] == pytest.approx(2 / 6)


def test_unknown_taste_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown taste 'tabs'"):
        Rater("tabs")
