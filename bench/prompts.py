"""The learning benchmark's prompts: coding requests, split into a held-in set (asked and rated while the
system learns) and a held-out set (only for measuring satisfaction; never rated, so never trained on)."""

from __future__ import annotations

import re

TASKS = [
    "reverses a string", "checks whether a number is prime", "merges two sorted lists", "counts the words in a text",
    "returns the n-th Fibonacci number", "flattens a nested list", "removes duplicates from a list",
    "finds the largest item in a list", "parses a date string", "reads a CSV file into a list of dicts",
    "writes a list of dicts to a JSON file", "splits a list into chunks of a given size", "checks for a palindrome",
    "computes the factorial of n", "sums the digits of a number", "converts Celsius to Fahrenheit",
    "finds the common items of two lists", "counts the vowels in a string", "capitalises every word of a title",
    "returns the median of a list", "validates an email address", "joins paths safely", "lists the files in a folder",
    "reads a file line by line", "computes the mean of a list of numbers", "finds the second largest number",
    "rotates a list by k places", "transposes a matrix", "checks whether two strings are anagrams",
    "returns the GCD of two numbers", "converts a binary string to an integer", "builds a frequency table of letters",
    "finds the longest word in a sentence", "removes vowels from a string", "checks whether a year is a leap year",
    "returns the keys of a dict sorted by value", "merges two dicts", "inverts a dict", "chunks a string into lines",
    "strips comments from Python source", "parses a query string into a dict", "formats a number with commas",
    "computes the dot product of two vectors", "normalises a list of numbers", "clamps a value to a range",
    "finds the index of an item with binary search", "sorts a list of tuples by the second item",
    "groups words by their first letter", "returns the running total of a list", "zips two lists into a dict",
    "counts the lines of a file", "checks whether a string is a number", "pads a string to a width",
    "converts snake_case to camelCase", "converts camelCase to snake_case", "truncates a string with an ellipsis",
    "returns the unique characters of a string", "checks whether brackets are balanced", "computes a moving average",
    "finds the mode of a list", "splits a sentence into words", "replaces tabs with spaces",
    "returns the last n lines of a file", "parses an INI file", "hashes a file with SHA-256",
    "retries a function call on failure", "times how long a function takes", "caches the results of a function",
    "generates a random password", "checks whether a list is sorted", "interleaves two lists",
    "returns the powerset of a set", "counts the bits set in an integer", "converts a Roman numeral to an integer",
    "converts an integer to a Roman numeral", "encodes a string with a Caesar cipher", "decodes base64 text",
    "returns the difference of two dates in days", "parses a duration like 1h30m", "finds all numbers in a string",
    "checks whether a port is open", "downloads nothing but builds a URL from parts", "escapes HTML characters",
    "wraps text to a width", "indents every line of a text", "returns the depth of a nested dict",
    "deep-merges two nested dicts", "finds files with a given extension", "renames files with a prefix",
    "returns the size of a folder", "computes the area of a circle", "computes the distance between two points",
    "checks whether a point is inside a rectangle", "scales a list of points", "finds the peak of a list",
    "returns the cumulative product of a list", "reverses the words of a sentence", "counts the occurrences of a substring",
    "removes blank lines from a text", "checks whether a number is a power of two", "returns the digits of a number",
    "builds a histogram of a list of numbers", "finds the k smallest items", "merges overlapping intervals",
    "computes the Levenshtein distance", "checks whether a graph has a cycle", "returns the transpose of a dict of lists",
    "splits a file path into parts", "parses a semantic version string", "compares two version strings",
    "returns the initials of a name", "masks all but the last four digits of a card number", "counts the lines of code",
    "converts bytes to a human-readable size", "loads environment variables from a file", "serialises a dataclass to JSON",
    "reads key=value pairs from a file", "checks whether a string starts with a vowel", "returns every n-th item",
]  # fmt: skip

PROMPTS = [f"Write a Python function that {t}." for t in TASKS]

_FILLER = {"a", "an", "the", "of", "to", "in", "by", "with", "for", "and", "is", "what", "how", "do", "i", "can",
           "write", "python", "function", "that", "whether", "given", "two", "every", "all", "my", "def", "class",
           "import", "return", "self"}  # fmt: skip


def content_words(text: str) -> set[str]:
    """The words that say what a request is about, crudely stemmed ("flattens", "flatten" → "flatten");
    identifiers are split at underscores, so `def read_lines(path)` is about "read" and "line"."""
    words = re.findall(r"[a-z]+", text.lower().replace("_", " "))
    return {w[:-1] if w.endswith("s") and len(w) > 3 else w for w in words} - _FILLER


def near(a: str, b: str, threshold: float = 0.5) -> bool:
    """Whether two requests ask nearly the same thing: their content words overlap by `threshold` or more
    (Jaccard), or one's words are all in the other's."""
    wa, wb = content_words(a), content_words(b)
    if not wa or not wb:
        return False
    return len(wa & wb) / len(wa | wb) >= threshold or wa <= wb or wb <= wa


def _replay() -> list[str]:
    from reinf.training.data import REPLAY_CHAT, REPLAY_CODE

    return REPLAY_CHAT + REPLAY_CODE


# A quarter of the requests measure satisfaction and are never rated, so never trained on; except those near a
# general prompt the trainer replays, or near another request: they are rated instead.
def _held_out(candidates: list[str]) -> list[str]:
    """The candidates that are near no replayed prompt and no rated one (a candidate moved to the rated ones can
    make another near, so until nothing moves)."""
    held = list(candidates)
    while True:
        rated = [p for p in PROMPTS if p not in held]
        keep = [p for p in held if not any(near(p, q) for q in _replay() + rated)]
        if keep == held:
            return held
        held = keep


HELD_OUT = _held_out(PROMPTS[3::4])
HELD_IN = [p for p in PROMPTS if p not in HELD_OUT]  # the rater rates answers to these
