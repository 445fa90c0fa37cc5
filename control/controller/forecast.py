"""A pool's demand forecast (Holt-Winters, statsmodels) and the forecast error (MAPE). Pure: no I/O.

`forecast(series, step_s=60, horizon_steps=20)` takes the demand per step, oldest first (e.g. the 1-minute request
rate from the rollups; None = a missing step) and returns the next `horizon_steps` values at the same resolution:

- Missing steps are filled by linear interpolation between their neighbours (carried flat at the ends).
- Steps finer than 5 minutes are averaged into 5-minute buckets before fitting (a 3-day fit takes well under a
  second that way; the controller refits every 5 minutes per pool) and the forecast is interpolated back to `step_s`.
  The buckets are aligned on the newest step, so the last bucket is always complete.
- At least 2 full seasons (days) of history: additive damped trend + additive seasonality. The initial seasonal
  profile is the mean daily profile of all the history fitted (each day's deviation from its own mean), so every day
  counts, not only the first two as statsmodels' heuristic would have it. At most `MAX_SEASONS` recent seasons are fitted.
- Less than that, but at least `MIN_TREND_POINTS` buckets: Holt (additive damped trend, no seasonality).
- Shorter: plain exponential smoothing of the level (a flat forecast); 1 or 2 buckets: their mean.
- A model that fails to fit falls back to the next simpler one. Values are never negative.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

BUCKET_S = 300  # the coarsest step the model sees when the input is finer
MAX_SEASONS = 7  # older history is dropped before fitting (speed; the level and trend forget it anyway)
MAX_POINTS = 7 * 288  # the same cap when the season is shorter than a few buckets
MIN_SEASONS = 2  # full seasons needed for the seasonal model
MIN_TREND_POINTS = 12  # buckets needed for Holt (an hour of 5-minute buckets)
MIN_LEVEL_POINTS = 3


def _filled(series: Sequence[float | None]) -> np.ndarray:
    values = np.array([np.nan if v is None else float(v) for v in series], dtype=float)
    if values.size == 0:
        raise ValueError("forecast needs a demand series with at least one value; the series is empty")
    known = np.flatnonzero(np.isfinite(values))
    if known.size == 0:
        raise ValueError(f"forecast needs at least one observed value; all {values.size} steps are missing")
    if known.size < values.size:  # interpolate inside, carry the first/last value flat outside
        values = np.interp(np.arange(values.size), known, values[known])
    return values


def _fit_forecast(y: np.ndarray, periods: int, steps: int) -> tuple[np.ndarray, str]:
    """Forecast `steps` buckets ahead with the richest model the history allows; returns (values, model name)."""
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    n = y.size
    attempts: list[str] = []
    if periods >= 2 and n >= MIN_SEASONS * periods:
        attempts.append("holt_winters")
    if n >= MIN_TREND_POINTS:
        attempts.append("holt")
    if n >= MIN_LEVEL_POINTS:
        attempts.append("level")
    for name in attempts:
        try:
            with warnings.catch_warnings():
                # statsmodels warns about convergence and log(0) in its information criteria; the forecast stands.
                warnings.simplefilter("ignore")
                if name == "holt_winters":
                    seasons = n // periods
                    tail = y[n - seasons * periods:]  # whole seasons, ending with the newest bucket
                    days = tail.reshape(seasons, periods)
                    profile = (days - days.mean(axis=1, keepdims=True)).mean(axis=0)
                    # The fit starts at the first bucket of `tail`, whose phase is profile[0].
                    trend0 = (days[-1].mean() - days[0].mean()) / (periods * max(seasons - 1, 1))
                    model = ExponentialSmoothing(
                        tail, trend="add", damped_trend=True, seasonal="add", seasonal_periods=periods,
                        initialization_method="known", initial_level=float(days[0].mean()),
                        initial_trend=float(trend0), initial_seasonal=profile - profile.mean())
                elif name == "holt":
                    model = ExponentialSmoothing(y, trend="add", damped_trend=True, initialization_method="estimated")
                else:
                    model = ExponentialSmoothing(y, initialization_method="estimated")
                # No brute-force start grid: 5-10x faster and, on daily demand, an equally good fit.
                out = np.asarray(model.fit(use_brute=False).forecast(steps), dtype=float)
            if np.all(np.isfinite(out)):
                return out, name
        except (ValueError, np.linalg.LinAlgError, FloatingPointError):
            continue
    return np.full(steps, float(y[-min(n, MIN_LEVEL_POINTS):].mean())), "mean"


def forecast_with_model(series: Sequence[float | None], *, step_s: int, horizon_steps: int,
                        season_s: int = 86400) -> tuple[list[float], str]:
    """`forecast()` plus the name of the model used: holt_winters, holt, level or mean (for the audit and the page)."""
    if step_s <= 0:
        raise ValueError(f"step_s must be a positive number of seconds, not {step_s}")
    if horizon_steps < 0:
        raise ValueError(f"horizon_steps must be >= 0, not {horizon_steps}")
    if season_s <= 0:
        raise ValueError(f"season_s must be a positive number of seconds, not {season_s}")
    values = _filled(series)
    if horizon_steps == 0:
        return [], "none"
    k = max(1, math.ceil(BUCKET_S / step_s)) if step_s < BUCKET_S else 1
    bucket_s = k * step_s
    periods = max(1, round(season_s / bucket_s))
    keep = min(values.size // k, max(MAX_SEASONS * periods, MAX_POINTS))
    if keep == 0:  # fewer steps than one bucket: a flat forecast at their mean
        return [max(0.0, float(values.mean()))] * horizon_steps, "mean"
    y = values[values.size - keep * k:].reshape(keep, k).mean(axis=1)
    ahead = math.ceil(horizon_steps / k) + 1
    buckets, name = _fit_forecast(y, periods, ahead)
    if k == 1:
        out = buckets[:horizon_steps]
    else:
        # Bucket j (1-based) ahead is the mean of steps (j-1)k+1 .. jk after the last one; place it at its centre
        # and interpolate (flat before the first centre).
        centres = np.arange(1, ahead + 1) * k - (k - 1) / 2
        out = np.interp(np.arange(1, horizon_steps + 1), centres, buckets)
    return [max(0.0, float(v)) for v in out], name


def forecast(series: Sequence[float | None], *, step_s: int, horizon_steps: int, season_s: int = 86400) -> list[float]:
    """The next `horizon_steps` values of `series` (oldest first, one value per `step_s`, None = missing), >= 0.
    ValueError when the series is empty or has no value at all. See the module docstring for the model used."""
    return forecast_with_model(series, step_s=step_s, horizon_steps=horizon_steps, season_s=season_s)[0]


def mape(actual: Sequence[float | None], predicted: Sequence[float | None]) -> float | None:
    """Mean absolute percentage error, in percent, over the pairs whose actual is non-zero (and both known).
    None when no pair can be compared; ValueError when the lengths differ."""
    if len(actual) != len(predicted):
        raise ValueError(f"mape needs as many predictions as actuals: {len(predicted)} predicted, {len(actual)} actual")
    errors = [abs(a - p) / abs(a) for a, p in zip(actual, predicted, strict=True)
              if a is not None and p is not None and a != 0 and math.isfinite(a) and math.isfinite(p)]
    if not errors:
        return None
    return 100.0 * sum(errors) / len(errors)
