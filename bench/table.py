"""The printed table of a bench run: one row per metric, reference and ours side by side with
the ratio and the aim; a failed measurement shows as ``ERR[n]``, its error as footnote n."""

from __future__ import annotations

from bench.results import Row


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    a = abs(value)
    if a >= 1000:
        return f"{value:,.0f}"
    if a >= 100:
        return f"{value:.0f}"
    if a >= 10:
        return f"{value:.1f}"
    if a >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def render_table(rows: list[Row]) -> tuple[str, list[str]]:
    footnotes: list[str] = []
    seen: dict[str, int] = {}

    def cell(value: float | None, error: str | None, who: str) -> str:
        if error is None:
            return fmt(value)
        if error not in seen:
            footnotes.append(error)
            seen[error] = len(footnotes)
        return f"ERR[{seen[error]}]"

    header = ("bench", "metric", "unit", "reference", "ours", "ours/ref", "better", "aim")
    lines = [header]
    for r in rows:
        ratio = r.ratio
        lines.append(
            (
                r.bench,
                r.metric,
                r.unit,
                cell(r.reference, r.reference_error, "ref"),
                cell(r.ours, r.ours_error, "ours"),
                "-" if ratio is None else f"{ratio:.2f}x",
                r.better,
                r.aim,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    right = {3, 4, 5}
    out = []
    for n, line in enumerate(lines):
        out.append(
            "  ".join(
                c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(line)
            ).rstrip()
        )
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out), [f"[{i}] {e}" for i, e in enumerate(footnotes, 1)]
