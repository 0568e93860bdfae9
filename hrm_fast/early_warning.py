"""Early warning of argmax collapse and fading input sensitivity (a warning, not a stop).

Both checks use values the training loop already has on the host: the averaged metrics it reads
every ``log_every`` steps and the probe report at each checkpoint, so they add no sync.

* ``low_unique``: the mean number of distinct argmax classes per batch stayed below
  ``warn_unique_below`` for ``warn_intervals`` log intervals in a row (repeated every
  ``warn_intervals`` intervals while it lasts).
* ``probe_margin``: the probe still passes, but its headroom -- ``min(frac_differ / min_differ,
  mean_tv / min_tv)``, 1 at the threshold -- fell below ``warn_probe_shrink`` times its value at
  the previous probe. At this rate the next checkpoint may stop the run.
"""

from __future__ import annotations

import math


def probe_headroom(report) -> float:
    """How far above its thresholds a probe report is (1.0 = on the threshold)."""
    ratios = []
    for value, threshold in ((report.frac_differ, report.min_differ),
                             (report.mean_tv, report.min_tv)):  # fmt: skip
        if threshold > 0:
            ratios.append(value / threshold if math.isfinite(value) else 0.0)
    return min(ratios) if ratios else math.inf


class CollapseWatch:
    def __init__(self, unique_below: float, intervals: int, probe_shrink: float):
        self.unique_below = unique_below
        self.intervals = max(1, intervals)
        self.probe_shrink = probe_shrink
        self.low_streak = 0
        self.last_headroom: float | None = None

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
        """A ``warning`` record when a passing probe's headroom shrank sharply, else None."""
        headroom = probe_headroom(report)
        previous, self.last_headroom = self.last_headroom, headroom
        if not report.passed or previous is None or not math.isfinite(previous):
            return None
        if headroom >= self.probe_shrink * previous:
            return None
        return {
            "event": "warning",
            "kind": "probe_margin",
            "step": report.step,
            "headroom": headroom,
            "previous_headroom": previous,
            "message": (
                f"input sensitivity fading: probe headroom {headroom:.2f}x its thresholds, "
                f"down from {previous:.2f}x at the previous probe"
            ),
        }
