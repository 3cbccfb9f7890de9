"""Plain reports shared by the tools: a markdown (or aligned plain-text) table."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], markdown: bool = True) -> str:
    """A markdown (or aligned plain-text) table; floats are shown with 4 significant digits."""
    cells = [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = (lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |") if markdown else (
        lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|" if markdown else "  ".join("-" * w for w in widths)
    return "\n".join([line(list(headers)), rule, *(line(r) for r in cells)])
