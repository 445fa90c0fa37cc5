"""The Holt-Winters demand forecast and MAPE. Pure functions; no database."""

from __future__ import annotations

import numpy as np
import pytest

from control.controller.forecast import forecast, forecast_with_model, mape


def trace(days: int, seed: int = 3) -> np.ndarray:
    """1-minute demand (req/s): floor 30, a morning ramp at 08:30, a peak around 14:00 whose height varies +-15 %
    by day, and 4 % noise."""
    rng = np.random.default_rng(seed)
    minutes = days * 1440
    h = (np.arange(minutes) % 1440) / 60
    height = (1 + rng.uniform(-0.15, 0.15, days))[np.arange(minutes) // 1440]
    base = 30 + 40 / (1 + np.exp(-(h - 8.5) * 3)) + 160 * height * np.exp(-0.5 * ((h - 14) / 2.2) ** 2)
    return base * (1 + rng.normal(0, 0.04, minutes))


@pytest.mark.parametrize("seed", [3, 11])
def test_forecast_at_13h_on_day_5_rises_toward_the_peak(seed: int) -> None:
    demand = trace(5, seed)
    cut = 4 * 1440 + 13 * 60  # 4 days of history and day 5 up to 13:00
    values, model = forecast_with_model(demand[:cut].tolist(), step_s=60, horizon_steps=90)
    assert model == "holt_winters"
    assert len(values) == 90
    actual = demand[cut:cut + 90]
    error = mape(actual.tolist(), values)
    assert error is not None and error < 15, f"MAPE {error:.1f} %"
    # It rises toward 14:00 rather than carrying 13:00 flat.
    assert np.mean(values[50:70]) > np.mean(values[:10]) * 1.05
    assert values[60] == pytest.approx(float(np.mean(demand[cut + 55:cut + 66])), rel=0.1)


def test_daily_seasonality_predicts_the_peak_hours_ahead() -> None:
    # From 10:00, four hours ahead: only the daily pattern can know that a peak comes at 14:00.
    demand = trace(5)
    cut = 4 * 1440 + 10 * 60
    values = forecast(demand[:cut].tolist(), step_s=60, horizon_steps=240)
    error = mape(demand[cut:cut + 240].tolist(), values)
    assert error is not None and error < 15, f"MAPE {error:.1f} %"
    assert max(values) > 1.5 * values[0]


def test_short_history_falls_back_without_error() -> None:
    day = trace(1)
    values, model = forecast_with_model(day[:1000].tolist(), step_s=60, horizon_steps=30)
    assert model == "holt" and len(values) == 30 and min(values) >= 0
    values, model = forecast_with_model(day[:30].tolist(), step_s=60, horizon_steps=10)
    assert model == "level" and len(values) == 10
    assert values[0] == pytest.approx(float(np.mean(day[:30])), rel=0.15)
    assert forecast_with_model([42.0], step_s=60, horizon_steps=3) == ([42.0, 42.0, 42.0], "mean")
    assert forecast([10.0, 20.0], step_s=300, horizon_steps=2) == [15.0, 15.0]


def test_empty_or_all_missing_series_is_refused() -> None:
    with pytest.raises(ValueError, match="the series is empty"):
        forecast([], step_s=60, horizon_steps=10)
    with pytest.raises(ValueError, match="all 4 steps are missing"):
        forecast([None, None, None, None], step_s=60, horizon_steps=10)
    with pytest.raises(ValueError, match="step_s must be a positive number of seconds, not 0"):
        forecast([1.0], step_s=0, horizon_steps=10)
    with pytest.raises(ValueError, match="horizon_steps must be >= 0, not -1"):
        forecast([1.0], step_s=60, horizon_steps=-1)


def test_missing_steps_are_filled() -> None:
    demand = trace(3).tolist()
    holes = [None if i % 7 == 0 or 2000 <= i < 2100 else v for i, v in enumerate(demand)]
    full = forecast(demand, step_s=60, horizon_steps=30)
    patched = forecast(holes, step_s=60, horizon_steps=30)
    assert mape(full, patched) < 5
    # Missing at the end: the last known value carries the level.
    assert forecast([50.0] * 30 + [None] * 5, step_s=60, horizon_steps=5)[0] == pytest.approx(50.0, rel=0.01)


def test_forecast_is_never_negative() -> None:
    falling = [max(0.0, 500 - 4 * i) for i in range(200)]
    assert min(forecast(falling, step_s=60, horizon_steps=120)) >= 0


def test_coarse_steps_are_used_as_they_are() -> None:
    # 10-minute steps, 3 days: seasonal at 144 steps a day; the answer is at 10-minute resolution.
    demand = trace(3)
    coarse = demand.reshape(-1, 10).mean(axis=1)
    values, model = forecast_with_model(coarse[:-30].tolist(), step_s=600, horizon_steps=30)
    assert model == "holt_winters" and len(values) == 30
    assert mape(coarse[-30:].tolist(), values) < 15


def test_mape_ignores_zero_actuals_and_reports_percent() -> None:
    assert mape([100.0, 200.0, 0.0], [110.0, 180.0, 5.0]) == pytest.approx(10.0)
    assert mape([0.0, 0.0], [1.0, 2.0]) is None
    assert mape([], []) is None
    assert mape([100.0, None], [90.0, 5.0]) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="2 predicted, 3 actual"):
        mape([1.0, 2.0, 3.0], [1.0, 2.0])
