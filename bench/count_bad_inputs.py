"""Count the bad inputs the reliability tests try, and how each one ends: a PrecedentsError, another exception
(a deep torch/numpy/pathlib error), or no error at all (a silent result).

Used as a pytest plugin: every ``pytest.raises(PrecedentsError...)`` block of the selected tests is one bad input;
its outcome is recorded and the block never stops the test, so later cases still run (on an older version of
the library, where many cases fail, this classifies them instead of stopping at the first). Writes a JSON summary
to the path in ``$PRECEDENTS_COUNT_OUT``::

    PRECEDENTS_COUNT_OUT=bench/results/bad_inputs.json python -m pytest -p bench.count_bad_inputs \\
        tests/test_index_safety.py tests/test_fingerprint.py ...
"""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest

_original_raises = pytest.raises
_outcomes: list[dict[str, str]] = []
_current = {"test": ""}


class _Counting:
    def __init__(self, expected, match):
        self.expected, self.match = expected, match

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        from precedents import PrecedentsError

        if kind is None:
            outcome = "no error (silent)"
        elif issubclass(kind, PrecedentsError):
            import re

            outcome = "PrecedentsError" if self.match is None or re.search(self.match, str(value)) else \
                "PrecedentsError, other message"
        elif isinstance(self.expected, type) and issubclass(kind, self.expected):
            return True                      # not a bad-input case (e.g. KeyboardInterrupt simulations)
        else:
            outcome = f"deep error ({kind.__name__})"
        _outcomes.append({"test": _current["test"], "outcome": outcome})
        return kind is None or issubclass(kind, Exception)


def _raises(expected, *args, match=None, **kwargs):
    from precedents import PrecedentsError

    if args or kwargs or not (isinstance(expected, type) and issubclass(PrecedentsError, expected)
                              or expected is PrecedentsError):
        return _original_raises(expected, *args, match=match, **kwargs)
    return _Counting(expected, match)


pytest.raises = _raises


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    _current["test"] = item.nodeid
    yield


def pytest_sessionfinish(session, exitstatus):
    counts = Counter(o["outcome"] for o in _outcomes)
    summary = {"bad_inputs_tried": len(_outcomes), "outcomes": dict(counts.most_common()),
               "tests": len({o["test"] for o in _outcomes}), "cases": _outcomes}
    path = os.environ.get("PRECEDENTS_COUNT_OUT")
    if path:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w") as f:
            json.dump(summary, f, indent=1)
    print(f"\nbad inputs tried: {len(_outcomes)}; outcomes: {dict(counts.most_common())}")
