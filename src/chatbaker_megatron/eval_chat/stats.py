"""Confidence intervals and rankings: percentile bootstrap of a mean, Bradley-Terry strengths.

`bootstrap_mean` resamples the items (judged turns) with replacement and
takes the percentiles of the resampled means. `bradley_terry` fits
P(i beats j) = p_i / (p_i + p_j) to the battles by Hunter's MM iterations,
a tie counting half a win to each side, with one virtual tie per pair of
models (a prior that keeps a model that never won finite), reported on the
Elo scale: 400 * log10(p_i), shifted so the ratings average 1000.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ELO_SCALE, ELO_MEAN = 400.0, 1000.0


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n}


def bootstrap_mean(
    values: list[float], *, resamples: int, confidence: float, seed: int
) -> Estimate | None:
    """The mean and its percentile-bootstrap interval; None for no values."""
    if not values:
        return None
    data = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(resamples, len(data)))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Estimate(float(data.mean()), float(low), float(high), len(data))


def _fit(
    wins: np.ndarray, games: np.ndarray, iterations: int = 10_000, tol: float = 1e-10
) -> np.ndarray:
    """MM updates p_i = W_i / sum_j n_ij / (p_i + p_j); returns log10 strengths, mean 0."""
    strength = np.ones(len(wins))
    for _ in range(iterations):
        denom = (games / (strength[:, None] + strength[None, :])).sum(axis=1)
        updated = wins / denom
        updated /= np.exp(np.log(updated).mean())
        if np.max(np.abs(updated - strength)) < tol:
            strength = updated
            break
        strength = updated
    logs = np.log10(strength)
    return logs - logs.mean()


def _tallies(battles: list[tuple[int, int, float]], n_models: int) -> tuple[np.ndarray, np.ndarray]:
    wins = np.zeros(n_models)
    games = np.zeros((n_models, n_models))
    for i in range(n_models):
        for j in range(i + 1, n_models):
            # The prior: one virtual tie between every two models.
            wins[i] += 0.5
            wins[j] += 0.5
            games[i, j] += 1
            games[j, i] += 1
    for i, j, outcome in battles:
        wins[i] += outcome
        wins[j] += 1 - outcome
        games[i, j] += 1
        games[j, i] += 1
    return wins, games


def bradley_terry(battles: list[tuple[int, int, float]], n_models: int) -> np.ndarray:
    """Elo-scale ratings of `n_models` from battles (i, j, outcome for i: 1 win, 0.5 tie, 0 loss)."""
    wins, games = _tallies(battles, n_models)
    return ELO_MEAN + ELO_SCALE * _fit(wins, games)


def bradley_terry_intervals(
    battles: list[tuple[int, int, float]],
    n_models: int,
    *,
    resamples: int,
    confidence: float,
    seed: int,
) -> list[Estimate]:
    """Ratings with percentile-bootstrap intervals over resampled battles."""
    point = bradley_terry(battles, n_models)
    rng = np.random.default_rng(seed)
    samples = np.empty((resamples, n_models))
    for r in range(resamples):
        picked = rng.integers(0, len(battles), size=len(battles))
        samples[r] = bradley_terry([battles[k] for k in picked], n_models)
    tail = (1 - confidence) / 2
    low, high = np.quantile(samples, [tail, 1 - tail], axis=0)
    return [
        Estimate(float(point[m]), float(low[m]), float(high[m]), len(battles))
        for m in range(n_models)
    ]
