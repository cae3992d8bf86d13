"""The `%%parallel` line parser on its own (no kernel, no processes): `split_line` and `parse_loop`."""

from __future__ import annotations

import re

import pytest
from IPython.core.error import UsageError

from nbparallel.magics import parse_loop, split_line

HELP = re.escape("%%parallel for NAME in ITERABLE [-> RESULT]")  # as a pattern for match=


@pytest.mark.parametrize(
    "line, loop, options",
    [
        ("for x in items", "for x in items", ""),
        ("  for x in items  ", "for x in items", ""),
        ("for x in items --workers 4", "for x in items", "--workers 4"),
        (
            "for path in files -> sizes --workers 4 --no-progress",
            "for path in files -> sizes",
            "--workers 4 --no-progress",
        ),
        ("--every-worker", "", "--every-worker"),
        ("", "", ""),
        # An expression with `--` not after a space stays in the loop: x--1 is x - (-1).
        ("for x in range(a--1)", "for x in range(a--1)", ""),
    ],
)
def test_split_line_puts_everything_from_the_first_space_dash_dash_in_the_options(
    line, loop, options
):
    assert split_line(line) == (loop, options)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("for x in items", ("x", "items", None)),
        ("for path in files -> sizes", ("path", "files", "sizes")),
        ("for path in files->sizes", ("path", "files", "sizes")),
        ("  for path in files   ->   sizes  ", ("path", "files", "sizes")),
        ("for a, b in pairs -> sums", ("a, b", "pairs", "sums")),
        ("for (a, (b, c)) in zip(xs, nested)", ("(a, (b, c))", "zip(xs, nested)", None)),
        ("for row in table.rows[1:] -> out", ("row", "table.rows[1:]", "out")),
        ("for k, v in {'a': 1, 'b': 2}.items()", ("k, v", "{'a': 1, 'b': 2}.items()", None)),
        (
            "for x in (n * n for n in range(3)) -> squares",
            ("x", "(n * n for n in range(3))", "squares"),
        ),
    ],
    ids=[
        "name",
        "result",
        "arrow-without-spaces",
        "extra-spaces",
        "tuple",
        "nested-tuple",
        "subscript",
        "dict-items",
        "generator",
    ],
)
def test_parse_loop_reads_target_iterable_and_result_of_every_valid_form(spec, expected):
    assert parse_loop(spec) == expected


def test_a_whole_line_parses_into_loop_and_options_as_the_magic_does():
    loop, options = split_line("for a, b in pairs -> sums --chunksize 8 --unordered")
    assert parse_loop(loop) == ("a, b", "pairs", "sums")
    assert options == "--chunksize 8 --unordered"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", rf"cannot read '': write the loop as: {HELP}"),
        ("path in files", rf"cannot read 'path in files': write the loop as: {HELP}"),
        ("for x", r"cannot read 'for x'"),
        ("for x in", r"cannot read 'for x in'"),
        ("for in items", r"cannot read 'for in items'"),
        ("for 1 in files", rf"'1' cannot be assigned to; write the loop as: {HELP}"),
        ("for f(x) in files", r"'f\(x\)' cannot be assigned to"),
        ("for x in [1, 2", r"'\[1, 2' is not a Python expression \("),
        ("for x in items ->", r"'items ->' is not a Python expression"),
        ("for x in [1] -> 2bad", r"the result after '->' must be a variable name, got '2bad'"),
        ("for x in [1] -> out.attr", r"must be a variable name, got 'out.attr'"),
    ],
    ids=[
        "empty",
        "no-for",
        "no-in",
        "no-iterable",
        "no-target",
        "literal-target",
        "call-target",
        "unclosed-bracket",
        "arrow-without-result",
        "result-not-a-name",
        "result-attribute",
    ],
)
def test_each_malformed_loop_raises_usage_error_saying_what_is_wrong_and_what_to_write(
    spec, message
):
    with pytest.raises(UsageError, match=message):
        parse_loop(spec)


def test_the_form_error_shows_an_example_and_the_every_worker_form():
    with pytest.raises(UsageError) as info:
        parse_loop("files")
    assert "%%parallel for path in files -> sizes --workers 4" in str(info.value)
    assert "%%parallel --every-worker" in str(info.value)
