"""A benchmark's goals, checked where they are printed: `make bench` fails on a goal missed, so a
goal is a claim the numbers must keep, not a caption. Exit status 3 (as `edgetune bench --gate`):
it ran, and a goal was not met; bench/run_all.py says which."""

from __future__ import annotations

GOAL_MISSED = 3


class Goals:
    def __init__(self) -> None:
        self.missed: list[str] = []

    def at_least(self, what: str, ratio: float, goal: float, strictly: bool = False) -> str:
        """'(goal >= 1.3x: met)' for printing; a miss is kept for exit_code()."""
        met = ratio > goal if strictly else ratio >= goal
        if not met:
            self.missed.append(f"{what} {ratio:.2f}x, goal {'>' if strictly else '>='} {goal:g}x")
        return f"(goal {'>' if strictly else '>='} {goal:g}x: {'met' if met else 'NOT met'})"

    def at_most(self, what: str, value: float, bound: float) -> str:
        """'(bound <= 1e-05: met)' for a difference that must stay small (printed as 2.38e-07)."""
        if not value <= bound:
            self.missed.append(f"{what} {value:.2e}, bound <= {bound:g}")
        return f"(bound <= {bound:g}: {'met' if value <= bound else 'NOT met'})"

    def exit_code(self) -> int:
        for miss in self.missed:
            print(f"goal not met: {miss}")
        return GOAL_MISSED if self.missed else 0
