"""A cell's equations as data: one line per intermediate, rendered to plain text or LaTeX.

Each built-in cell in :mod:`unrolled.cells` keeps its equations in a small table of
:class:`Equation` right above the update that computes them; the left-hand sides are the names
of the update's named-tuple fields. The docstrings, ``unrolled explain`` and the docs render that
one table, so the equations are written once.

The plain-text form uses ``σ``, ``tanh``, ``max``, ``⊙`` and subscripts written ``W_ii``; the
LaTeX form is derived from it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

_LATEX = [
    (r"σ", r"\\sigma"),
    (r"⊙", r"\\odot"),
    (r"\btanh\b", r"\\tanh"),
    (r"\bmax\b", r"\\max"),
    (r"\b([Wb])_(\w+)", r"\1_{\2}"),
]


@dataclass(frozen=True)
class Equation:
    """``lhs = rhs``; ``projected``: the right-hand side with an LSTM output projection."""

    lhs: str
    rhs: str
    projected: str | None = None

    def text(self, projection: bool = False) -> str:
        """The right-hand side that applies, in plain text."""
        return self.projected if projection and self.projected else self.rhs


def select(table: Sequence[Equation], projection: bool = False) -> list[tuple[str, str]]:
    """``[(lhs, rhs), ...]`` in plain text, with the projected forms when ``projection``."""
    return [(eq.lhs, eq.text(projection)) for eq in table]


def latex(text: str) -> str:
    """One plain-text expression in LaTeX: ``σ(W_ii x)`` -> ``\\sigma(W_{ii} x)``."""
    for pattern, replacement in _LATEX:
        text = re.sub(pattern, replacement, text)
    return text


def latex_block(table: Sequence[Equation]) -> str:
    """The table as the body of a reST ``.. math::`` block, aligned at ``=``."""
    lines = []
    for eq in table:
        rhs = latex(eq.rhs)
        if eq.projected:
            rhs += r" \quad\text{or, with a projection,}\quad " + latex(eq.projected)
        lines.append(f"{eq.lhs} &= {rhs}")
    return " \\\\\n".join(lines)


def symbols(rhs: str) -> list[str]:
    """The weights, biases and variables of a plain-text right-hand side, in order of first
    appearance: ``"σ(W_ir x + b_ir + W_hr h + b_hr)"`` -> ``[W_ir, x, b_ir, W_hr, h, b_hr]``."""
    found = re.findall(r"\b(?:W_[a-z]+|b_[a-z]+|[a-z])\b'?", rhs)
    return list(dict.fromkeys(found))


F = TypeVar("F", bound=Callable)


def with_equations(table: Sequence[Equation]) -> Callable[[F], F]:
    """Decorator: put the table, as a ``.. math::`` block, after the function's summary line."""

    def decorate(function: F) -> F:
        summary, _, rest = (function.__doc__ or "").partition("\n")
        block = "\n".join("        " + line for line in latex_block(table).splitlines())
        function.__doc__ = f"{summary}\n\n    .. math::\n\n{block}\n{rest}"
        return function

    return decorate
