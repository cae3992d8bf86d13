"""Options on their own (no processes): the default worker count and where it comes from."""

from __future__ import annotations

import re

import pytest

from nbparallel import OptionError, Parallel
from nbparallel.options import WORKERS_VARIABLE, Options, usable_cpus


def test_without_the_variable_the_default_is_the_usable_cpus(monkeypatch):
    monkeypatch.delenv(WORKERS_VARIABLE, raising=False)
    assert Options().worker_count == usable_cpus()


@pytest.mark.parametrize("value, expected", [("4", 4), ("1", 1), (" 12\n", 12)])
def test_the_variable_sets_the_default_worker_count(monkeypatch, value, expected):
    monkeypatch.setenv(WORKERS_VARIABLE, value)
    assert Options().worker_count == expected


def test_an_empty_variable_counts_as_unset(monkeypatch):
    monkeypatch.setenv(WORKERS_VARIABLE, "")
    assert Options().worker_count == usable_cpus()


def test_workers_given_explicitly_win_over_the_variable(monkeypatch):
    monkeypatch.setenv(WORKERS_VARIABLE, "4")
    assert Options(workers=3).worker_count == 3
    assert Options().merged(workers=1).worker_count == 1


@pytest.mark.parametrize("value", ["0", "-2", "two", "2.5", "+3", "1e3", "٣"])
def test_a_bad_value_raises_option_error_naming_the_variable_and_what_it_must_be(
    monkeypatch, value
):
    monkeypatch.setenv(WORKERS_VARIABLE, value)
    expected = re.escape(
        f"NBPARALLEL_WORKERS={value!r} is not valid: it must be a positive whole number"
    )
    with pytest.raises(OptionError, match=expected) as info:
        _ = Options().worker_count
    assert isinstance(info.value, ValueError)


def test_a_bad_value_fails_the_call_before_any_worker_starts(monkeypatch):
    monkeypatch.setenv(WORKERS_VARIABLE, "many")
    session = Parallel()
    with pytest.raises(OptionError, match="NBPARALLEL_WORKERS='many'"):
        session.map(abs, [1, 2], progress=False)
    assert session.status().workers == []
    monkeypatch.delenv(WORKERS_VARIABLE)
    session.shutdown()
