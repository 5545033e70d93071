"""A seeded synthetic classification stream whose concept drifts over simulated days: the
demo's stand-in for production traffic with delayed labels."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np

from pipelines.datalake import LabelledDay

FEATURES = tuple(f"f{i}" for i in range(5))


@dataclass(frozen=True)
class DriftingConcept:
    """Labels follow a linear rule whose direction turns by `degrees_per_day` between
    `drift_start` and `drift_end` (days since `start`), with score noise `noise`. On the
    `label_incidents` days a labelling fault flips `incident_flip` of the labels: accuracy
    dips, but no model trained on the data could do better — a dip that is not drift."""

    seed: int = 7
    start: date = date(2026, 9, 1)
    drift_start: int = 14
    drift_end: int = 40
    degrees_per_day: float = 2.5
    noise: float = 0.35
    examples_per_day: int = 2000
    label_incidents: tuple[int, ...] = (9, 11)
    incident_flip: float = 0.12

    def angle(self, day: int) -> float:
        """The concept's rotation on `day`, in radians."""
        moving = min(max(day, self.drift_start), self.drift_end) - self.drift_start
        return math.radians(moving * self.degrees_per_day)

    def date_of(self, day: int) -> date:
        return self.start + timedelta(days=day)

    def sample(self, day: int) -> LabelledDay:
        """The labelled examples of `day` (the same for the same seed and day)."""
        rng = np.random.default_rng([self.seed, day + 1_000_000])
        x = rng.normal(size=(self.examples_per_day, len(FEATURES)))
        theta = self.angle(day)
        direction = np.zeros(len(FEATURES))
        direction[0], direction[1] = math.cos(theta), math.sin(theta)
        direction[2] = 0.5
        score = x @ direction + rng.normal(scale=self.noise, size=len(x))
        y = (score > 0).astype(np.int_)
        if day in self.label_incidents:
            flipped = rng.random(len(y)) < self.incident_flip
            y = np.where(flipped, 1 - y, y)
        return LabelledDay(self.date_of(day).isoformat(), FEATURES, x, y)
