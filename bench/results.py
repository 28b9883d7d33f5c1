"""What a benchmark produces and how it is summarised: progress lines on stderr, the result
rows (reference beside ours), nearest-rank statistics, and the guard that turns a failing
benchmark into its recorded error instead of a crash."""

from __future__ import annotations

import math
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

# ----------------------------------------------------------------------------------- output


_T0 = time.monotonic()


def log(message: str) -> None:
    """Progress on stderr (stdout carries the table)."""
    sys.stderr.write(f"[bench {time.monotonic() - _T0:7.1f}s] {message}\n")
    sys.stderr.flush()


def short_error(exc: BaseException | str, limit: int = 300) -> str:
    text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class Row:
    """One metric, measured for the reference and for ours. ``ratio`` is ours / reference."""

    bench: str
    metric: str
    unit: str
    better: str  # "lower" or "higher"
    reference: float | None = None
    ours: float | None = None
    reference_error: str | None = None
    ours_error: str | None = None
    aim: str = ""
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.reference is None or self.ours is None or self.reference == 0:
            return None
        return self.ours / self.reference

    def set(self, key: str, value: float | None = None, error: str | None = None) -> None:
        if key == "ref":
            self.reference, self.reference_error = value, error
        else:
            self.ours, self.ours_error = value, error

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratio"] = self.ratio
        return d


@dataclass
class BenchResult:
    name: str
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0


# ------------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sequence."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "min": min(values),
        "median": statistics.median(values),
        "p90": percentile(values, 90),
        "max": max(values),
        "mean": statistics.fmean(values),
    }


def bench_guard(result: BenchResult, fn: Callable[[], None]) -> None:
    """Run one benchmark body; an exception becomes the benchmark's error, never a crash."""
    t0 = time.monotonic()
    try:
        fn()
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        result.error = short_error(exc, 600)
        log(f"{result.name}: failed: {result.error}")
        traceback.print_exc(file=sys.stderr)
    finally:
        result.seconds = time.monotonic() - t0
