"""Early warning of argmax collapse and fading input sensitivity (a warning, not a stop).

Both checks use values the training loop already has on the host: the averaged metrics it reads
every ``log_every`` steps and the probe report at each checkpoint, so they add no sync.

* ``low_unique``: the mean number of distinct argmax classes per batch stayed below
  ``warn_unique_below`` for ``warn_intervals`` log intervals in a row (repeated every
  ``warn_intervals`` intervals while it lasts).
* ``probe_margin``: the probe still passes, but its mean TV distance fell below
  ``warn_probe_shrink`` times its value at the previous probe. TV, not the differ-fraction,
  which also falls in plain argmax collapse: over the ablation data (docs/safeguards.md) this
  rule warned in 6 of 10 runs trained on shuffled inputs (the older min-of-both-ratios rule:
  1 of 10), and both warned in about 7% of healthy runs.
"""

from __future__ import annotations

import math


def probe_headroom(report) -> float:
    """How far above its TV threshold a probe report is (1.0 = on the threshold)."""
    if report.min_tv <= 0:
        return math.inf
    return report.mean_tv / report.min_tv if math.isfinite(report.mean_tv) else 0.0


class CollapseWatch:
    def __init__(self, unique_below: float, intervals: int, probe_shrink: float):
        self.unique_below = unique_below
        self.intervals = max(1, intervals)
        self.probe_shrink = probe_shrink
        self.low_streak = 0
        self.last_tv: float | None = None

    def on_log(self, step: int, unique_classes: float) -> dict | None:
        """A ``warning`` record when unique predicted classes have stayed low, else None."""
        if math.isfinite(unique_classes) and unique_classes < self.unique_below:
            self.low_streak += 1
        else:
            self.low_streak = 0
        if self.low_streak == 0 or self.low_streak % self.intervals:
            return None
        return {
            "event": "warning",
            "kind": "low_unique",
            "step": step,
            "unique_classes": unique_classes,
            "message": (
                f"argmax collapse? unique predicted classes < {self.unique_below:g} for "
                f"{self.low_streak} log intervals (now {unique_classes:.1f})"
            ),
        }

    def on_probe(self, report) -> dict | None:
        """A ``warning`` record when a passing probe's TV distance fell sharply, else None."""
        tv = report.mean_tv if math.isfinite(report.mean_tv) else 0.0
        previous, self.last_tv = self.last_tv, tv
        if not report.passed or previous is None or tv >= self.probe_shrink * previous:
            return None
        return {
            "event": "warning",
            "kind": "probe_margin",
            "step": report.step,
            "probe_tv": tv,
            "previous_probe_tv": previous,
            "headroom": probe_headroom(report),
            "message": (
                f"input sensitivity fading: probe TV {tv:.4g} ({probe_headroom(report):.1f}x "
                f"its threshold), down from {previous:.4g} at the previous probe"
            ),
        }
