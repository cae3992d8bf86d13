"""Paired, interleaved timing for benchmarks on a shared machine, whose load drifts: two
variants run in turn, the order swapped every round, and are compared round by round."""

from __future__ import annotations

from collections.abc import Callable


def alternating_rounds(
    first: Callable[[], float], second: Callable[[], float], rounds: int
) -> tuple[list[float], list[float], list[float]]:
    """The seconds `first` and `second` say they took in each of `rounds` rounds, and their
    ratios first / second; `first` runs first in even rounds, `second` in odd ones."""
    first_times, second_times = [], []
    for number in range(rounds):
        if number % 2:
            b, a = second(), first()
        else:
            a, b = first(), second()
        first_times.append(a)
        second_times.append(b)
    return (
        first_times,
        second_times,
        [a / b for a, b in zip(first_times, second_times, strict=True)],
    )
