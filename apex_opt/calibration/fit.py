"""Fit constants to measurements: which ones the measurements determine, then a bounded least-squares fit of those.

The model is a simulator, so the residuals (log predicted/measured of each measured metric) are evaluated, not
differentiated: :func:`fit_constants` takes a function from constant values to residuals. It

1. measures how each constant moves the residuals (a forward difference of a fifth of its unit: its value, or
   its typical size when the value is near zero; later, a fifth of the value reached if that is larger: wide
   enough to see through the small steps a discrete-event simulation takes);
2. keeps the constants the measurements determine: a constant whose change moves no prediction is left at its
   start value (*not determined*), and so is one that moves them only the way a kept constant does (*not
   separable*: the runs cannot tell them apart; constants are considered in order of influence), and one with a
   prior whose posterior spread the runs leave above :data:`NARROWING` of its prior spread (*weakly
   determined*);
3. fits the kept ones by Levenberg-Marquardt within their bounds, re-measuring the Jacobian after each
   accepted step. A constant with a prior ``spread`` (in units) is held toward its start: a move of one spread
   costs as much as a prediction off by :data:`MODEL_ERROR`, so a few runs that barely pin a constant down do not
   drag it far (a maximum a-posteriori fit with the start as the prior).

Deterministic: the same residual function gives the same fit.

>>> import numpy as np
>>> u = Unknown("a", start=1.0, lower=0.1, upper=10.0, typical=1.0)
>>> v = Unknown("b", start=1.0, lower=0.1, upper=10.0, typical=1.0)
>>> out = fit_constants([u, v], lambda x: np.array([np.log(x["a"] / 2.0), np.log(x["a"] / 2.0)]))
>>> round(out.values["a"], 3), sorted(out.left)
(2.0, ['b'])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

#: a constant moving the predictions by less than this (rms of log ratios) per unit change is not determined
SENSITIVITY_FLOOR = 0.01
#: a constant whose effect is within this share (sine of the angle) of the kept constants' is not separable
SEPARABILITY = 0.2
#: a constant the runs narrow to more than this share of its prior spread is left at its start
NARROWING = 0.5
#: the forward-difference step, in units
DIFF_STEP = 0.2
#: the relative error a predicted mean carries anyway (the development fit's typical error): a constant's move away
#: from its start of one prior spread costs as much as a prediction off by this much
MODEL_ERROR = 0.05


@dataclass(frozen=True)
class Unknown:
    """A constant to fit: its start value, bounds and typical size (the unit of change near zero)."""

    key: str
    start: float
    lower: float
    upper: float
    typical: float
    spread: float = math.inf

    @property
    def unit(self) -> float:
        return abs(self.start) if abs(self.start) >= 0.1 * self.typical else self.typical


@dataclass
class FitOutcome:
    """What :func:`fit_constants` found: fitted values, constants left at their start and why, residuals."""

    values: dict[str, float]
    left: dict[str, str]
    sensitivity: dict[str, float]
    residuals_before: np.ndarray
    residuals_after: np.ndarray
    evaluations: int = 0
    iterations: int = 0
    history: list[float] = field(default_factory=list)


Residuals = Callable[[dict[str, float]], np.ndarray]


def _finite(r: np.ndarray, cap: float = 5.0) -> np.ndarray:
    """Residuals with NaN (nothing predicted) and runaway values capped, so a failed prediction costs a lot but
    stays comparable."""
    r = np.asarray(r, dtype=float)
    return np.clip(np.where(np.isfinite(r), r, cap), -cap, cap)


def fit_constants(unknowns: Sequence[Unknown], residuals: Residuals, *, max_iterations: int = 12,
                  progress: Callable[[str], None] | None = None) -> FitOutcome:
    """Fit the ``unknowns`` that the residuals determine (see the module docstring); the others keep their start."""
    say = progress or (lambda _msg: None)
    evaluations = 0

    def values_at(u: np.ndarray, free: Sequence[Unknown]) -> dict[str, float]:
        x = {k.key: k.start for k in unknowns}
        for k, uj in zip(free, u, strict=True):
            x[k.key] = float(np.clip(k.start + uj * k.unit, k.lower, k.upper))
        return x

    def run(u: np.ndarray, free: Sequence[Unknown]) -> np.ndarray:
        nonlocal evaluations
        evaluations += 1
        return _finite(residuals(values_at(u, free)))

    def jacobian(u: np.ndarray, r: np.ndarray, free: Sequence[Unknown]) -> np.ndarray:
        cols = []
        for j, k in enumerate(free):
            value = k.start + u[j] * k.unit  # a step of DIFF_STEP units, or of that share of a value grown larger
            step = max(DIFF_STEP, DIFF_STEP * abs(value) / k.unit)
            if k.start + (u[j] + step) * k.unit > k.upper:  # at the upper bound: a backward difference
                step = -step
            du = np.array(u, dtype=float)
            du[j] += step
            cols.append((run(du, free) - r) / step)
        return np.column_stack(cols) if cols else np.zeros((len(r), 0))

    all_u = np.zeros(len(unknowns))
    r0 = run(all_u, unknowns)
    say(f"start: rms log error {float(np.sqrt(np.mean(r0 ** 2))):.3f} over {len(r0)} measured values")
    j0 = jacobian(all_u, r0, unknowns)
    sensitivity = {k.key: float(np.sqrt(np.mean(j0[:, i] ** 2))) if len(r0) else 0.0
                   for i, k in enumerate(unknowns)}
    order = sorted(range(len(unknowns)), key=lambda i: (-sensitivity[unknowns[i].key], unknowns[i].key))
    kept: list[int] = []
    basis: list[np.ndarray] = []
    left: dict[str, str] = {}
    for i in order:
        k = unknowns[i]
        col = j0[:, i]
        norm = float(np.linalg.norm(col))
        if sensitivity[k.key] < SENSITIVITY_FLOOR:
            left[k.key] = (f"not determined: a change of {k.unit:.3g} moves the predictions by "
                           f"{sensitivity[k.key] * 100:.2g}% (rms)")
            continue
        if len(kept) >= len(r0):
            left[k.key] = "not determined: more constants than measured values"
            continue
        v = col / norm
        orth = v - sum(float(b @ v) * b for b in basis) if basis else v
        if float(np.linalg.norm(orth)) < SEPARABILITY:
            twin = max(kept, key=lambda m: abs(float(j0[:, m] @ col)) / float(np.linalg.norm(j0[:, m])))
            left[k.key] = (f"not separable from {unknowns[twin].key} (the runs move the predictions alike for "
                           "both); add runs at other loads or lengths")
            continue
        kept.append(i)
        basis.append(orth / float(np.linalg.norm(orth)))
    # a constant with a prior must also be pinned down: the runs have to narrow it to less than NARROWING of its
    # prior spread (its posterior spread, with the other kept constants free to move with it)
    while True:
        spread = np.array([unknowns[i].spread for i in kept])
        finite = np.isfinite(spread)
        if not finite.any():
            break
        jk = j0[:, kept] / MODEL_ERROR
        precision = jk.T @ jk + np.diag(np.where(finite, 1.0 / np.where(finite, spread, 1.0) ** 2, 0.0))
        try:
            posterior = np.sqrt(np.clip(np.diag(np.linalg.pinv(precision)), 0.0, None))
        except np.linalg.LinAlgError:  # pragma: no cover - pinv of a small symmetric matrix
            break
        ratio = np.where(finite, posterior / np.where(finite, spread, 1.0), 0.0)
        worst = int(np.argmax(ratio))
        if ratio[worst] <= NARROWING:
            break
        k = unknowns[kept.pop(worst)]
        left[k.key] = (f"weakly determined: these runs narrow it only to {ratio[worst] * 100:.0f}% of its prior "
                       "spread (with the other constants free); add runs at other loads or lengths")
    free = [unknowns[i] for i in sorted(kept)]
    weights = np.array([MODEL_ERROR / k.spread for k in free])  # the prior's pull, per unit of move

    def augmented(res: np.ndarray, at: np.ndarray) -> np.ndarray:
        return np.concatenate([res, weights * at])

    u = np.zeros(len(free))
    r = r0
    jac = np.vstack([j0[:, sorted(kept)], np.diag(weights)])
    lam = 1e-2
    cost = float(r @ r)
    history = [cost]
    lo = np.array([(k.lower - k.start) / k.unit for k in free])
    hi = np.array([(k.upper - k.start) / k.unit for k in free])
    iterations = 0
    while free and iterations < max_iterations:
        iterations += 1
        g = jac.T @ augmented(r, u)
        # constants held at a bound by the gradient stay there; the step is solved for the others
        moving = ~(((u <= lo + 1e-12) & (g > 0)) | ((u >= hi - 1e-12) & (g < 0)))
        if not moving.any():
            break
        jm = jac[:, moving]
        a = jm.T @ jm
        step = np.zeros(len(free))
        step[moving] = -np.linalg.solve(a + lam * np.diag(np.maximum(np.diag(a), 1e-9)) + 1e-12 * np.eye(len(a)),
                                        g[moving])
        trial = np.clip(u + step, lo, hi)
        if float(np.max(np.abs(trial - u))) < 1e-4:
            break
        r_trial = run(trial, free)
        c_trial = float(np.sum(augmented(r_trial, trial) ** 2))
        if c_trial < cost:
            improvement = (cost - c_trial) / max(cost, 1e-12)
            u, r, cost = trial, r_trial, c_trial
            history.append(cost)
            lam = max(lam / 3.0, 1e-6)
            say(f"iteration {iterations}: rms log error {float(np.sqrt(np.mean(r ** 2))):.3f}")
            if improvement < 1e-3:
                break
            jac = np.vstack([jacobian(u, r, free), np.diag(weights)])
        else:
            lam *= 4.0
            if lam > 1e4:
                break
    values = values_at(u, free)
    return FitOutcome({k.key: values[k.key] for k in free}, left, sensitivity, r0, r, evaluations, iterations,
                      history)


__all__ = ["DIFF_STEP", "MODEL_ERROR", "NARROWING", "SENSITIVITY_FLOOR", "SEPARABILITY", "FitOutcome", "Unknown",
           "fit_constants"]
