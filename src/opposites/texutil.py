"""LaTeX escaping and number formatting for text filled from results."""

from __future__ import annotations

import math

from opposites.nodes import Node

_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(text: object) -> str:
    """Escape LaTeX's special characters; characters outside ASCII (e.g. byte-level token pieces)
    become '?', so any token string can be printed."""
    return "".join(_TEX.get(c, c if c.isascii() and (c.isprintable() or c == "\n") else "?") for c in str(text))


def code(text: object) -> str:
    """Escape for \\texttt, keeping '--' as two hyphens (T1 fonts would make it a dash)."""
    return tex_escape(text).replace("-", "-{}")


TINY = 1e-6  # below this a number prints as 0 (float noise: a patched cell's -6e-09)


def fmt(x: float, digits: int = 2, exact: bool = False) -> str:
    """A number for the text: `digits` decimals, or (unless `exact`) two significant digits when
    that would print 0.00 for a value of at least TINY, never in exponent notation (0.000069, not
    6.9e-05); a real minus sign, never on a number that prints as zero ("0.00", not "-0.00");
    'n/a' for NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if abs(x) < TINY:
        x = 0.0
    s = f"{x:.{digits}f}"
    if x != 0 and float(s) == 0 and digits > 0 and not exact:
        s = f"{x:.{1 - math.floor(math.log10(abs(x)))}f}"
    if float(s) == 0:
        s = s.lstrip("-")
    return s.replace("-", "$-$", 1) if s.startswith("-") else s


def _interval(value: float, ci: list[float], digits: int, exact: bool = False) -> tuple[str, str, str] | None:
    """(estimate, low, high) as text, the bounds with the estimate's decimals (one format per
    interval): `digits` decimals unless the interval is narrower than their last place, so a small
    estimate gets fmt's significant digits only where its interval resolves them ("0.00 [-0.02,
    0.01]", not "-0.0027 [-0.0239, 0.0132]"); None where the interval is NaN for lack of clusters
    and the value is not. `exact`: `digits` decimals whatever the interval (numbers compared in
    one sentence)."""
    wide = exact or all(isinstance(x, (int, float)) and not math.isnan(x) for x in ci) and ci[1] - ci[0] >= 10 ** -digits
    shown = fmt(value, digits, exact=wide)
    if all(isinstance(x, float) and math.isnan(x) for x in ci) and shown != "n/a":
        return None
    places = len(shown.rsplit(".", 1)[1]) if "." in shown else digits
    return shown, fmt(ci[0], places, exact=True), fmt(ci[1], places, exact=True)


def fmt_ci(value: float, ci: list[float] | None, digits: int = 2) -> str:
    """'value [low, high]' for a table cell or sentence; a line breaks before the bracket, inside it
    (\\cisep, paper.tex: a comma and a near-forbidden break) only where the bracket is wider than
    its column; 'value [n too small]' where the interval is NaN for lack of clusters
    (circuits.clustered_interval) and the value is not."""
    if ci is None:
        return fmt(value, digits)
    parts = _interval(value, ci, digits)
    return f"{fmt(value, digits)} [n too small]" if parts is None else "{} [{}\\cisep {}]".format(*parts)


def fmt_ci_to(value: float, ci: list[float] | None, digits: int = 2, exact: bool = False) -> str:
    """'value, CI low to high' for a sentence, the bounds with the estimate's decimals (fmt_ci); a
    line may break before 'to', never after 'CI' or 'to'."""
    if ci is None:
        return fmt(value, digits)
    parts = _interval(value, ci, digits, exact)
    return f"{fmt(value, digits)}, n too small for an interval" if parts is None else "{}, CI~{} to~{}".format(*parts)


def pct(x: float | None) -> str:
    """A share as a percentage for the text ('n/a' when undefined)."""
    return "n/a" if x is None else f"{100 * x:.0f}\\%"


def component_runs(components: list[str]) -> str:
    """Components as runs: heads of one layer with consecutive indices as "0.0--0.3", MLPs of
    consecutive layers as "MLP~0--3" (never broken after "MLP"), in the order given otherwise
    ("0.0, 0.1, 0.2, MLP 1" -> "0.0--0.2, MLP~1")."""
    runs: list[list] = []  # [kind, layer, first, last]
    for c in components:
        n = Node.parse(c)
        key, index = (("head", n.layer), n.head) if n.is_head else (("mlp", None), n.layer)
        if runs and runs[-1][0] == key and runs[-1][2] == index - 1:
            runs[-1][2] = index
        else:
            runs.append([key, index, index])
    label = lambda key, i: f"{key[1]}.{i}" if key[0] == "head" else f"MLP~{i}"  # noqa: E731
    return ", ".join(label(k, a) if a == b else f"{label(k, a)}--{b if k[0] == 'mlp' else label(k, b)}" for k, a, b in runs)


def and_join(items) -> str:
    """A list for a sentence: "a", "a and b", "a, b and c"."""
    items = [str(x) for x in items]
    return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else "".join(items)
