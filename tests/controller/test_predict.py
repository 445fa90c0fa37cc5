"""The predictive runtime: the forecast is refitted from the gateway's per-minute request log, the tick scales out
ahead of the forecast peak, and the page's API compares what was forecast with what came (MAPE)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from agents.sim.background import BackgroundFleet
from control.controller import loop, predict
from control.controller.models import ForecastPoint, ScalingAction
from control.routing.models import RequestMinute
from dashboard.fleet.models import Pool
from tests.controller.conftest import bind_local
from tests.controller.test_actions import set_pool_policy

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("redis_db")]
POOL = "ctl"
PEAK = 14  # hour of the daily peak (UTC)


def demand(t: datetime) -> float:
    """Requests per second: a night floor of 2 and a peak of 20 at 14:00."""
    hours = t.hour + t.minute / 60
    return 2 + 18 * math.exp(-((hours - PEAK) ** 2) / (2 * 1.5**2))


def seed_history(start: datetime, end: datetime) -> None:
    rows = []
    t = start
    while t < end:
        rows.append(RequestMinute(minute=t, node="ctl-01", pool=POOL, request_class="standard",
                                  requests=round(demand(t) * 60), status_2xx=round(demand(t) * 60)))
        t += timedelta(minutes=1)
    RequestMinute.objects.bulk_create(rows, batch_size=2000)


def test_the_tick_scales_out_ahead_of_the_forecast_peak_and_the_error_is_measured(fleet: BackgroundFleet) -> None:
    # Three days of history, now = 12:50 on the fourth: the peak needs 20 req/s / 5 per node = 4 nodes.
    now = datetime(2026, 11, 24, 12, 50, tzinfo=UTC)
    seed_history(now - timedelta(days=3), now)
    bind_local(POOL, fleet)
    set_pool_policy(POOL, min_nodes=1, max_nodes=8, rules=[],
                    predictive={"enabled": True, "horizon_min": 10, "metric": "request_rate", "per_node": 5.0,
                                "boot_time_s": 3600, "buffer_min": 10})
    fleet.add_node(name="ctl-01")
    out = predict.refit(now)
    assert out[POOL]["points"] >= 70 and out[POOL]["per_node"] == 5.0
    assert 15 < out[POOL]["peak"] < 25, out  # the 14:00 peak is within the 70-minute lead
    assert ForecastPoint.objects.filter(pool__name=POOL).count() == out[POOL]["points"]
    result = loop.tick(now)
    assert result.errors == {}
    action = ScalingAction.objects.get()
    assert (action.rule, action.from_size, action.state) == ("predictive", 1, "done")
    assert action.to_size in (4, 5), action.metrics
    assert action.metrics["forecast_peak"] > 15
    assert len(fleet.nodes) == action.to_size
    # An hour later the forecast minutes have happened: forecast vs actual, and the MAPE of the forecasts.
    later = now + timedelta(hours=1)
    seed_history(now, later)
    acc = predict.accuracy(Pool.objects.get(name=POOL), "request_rate", now - timedelta(hours=1), later)
    assert acc["mape"] is not None and acc["mape"] < 20, acc["mape"]
    assert len(acc["actual"]) == 120 and acc["forecast"][0]["lead_min"] == 0
    # A later refit keeps each minute's first forecast (made a lead time ahead), so the error stays honest.
    first = ForecastPoint.objects.get(pool__name=POOL, ts=later - timedelta(minutes=1))
    predict.refit(later)
    assert ForecastPoint.objects.get(pk=first.pk).made == now


def test_too_little_history_skips_the_forecast_and_predictive_does_nothing(fleet: BackgroundFleet) -> None:
    now = datetime(2026, 11, 24, 12, 50, tzinfo=UTC)
    seed_history(now - timedelta(minutes=10), now)
    bind_local(POOL, fleet)
    set_pool_policy(POOL, min_nodes=0, max_nodes=8, rules=[],
                    predictive={"enabled": True, "horizon_min": 10, "metric": "request_rate", "per_node": 5.0,
                                "boot_time_s": 60, "buffer_min": 1})
    out = predict.refit(now)
    assert "less than 30 minutes" in out[POOL]["skipped"]
    loop.tick(now)
    assert not ScalingAction.objects.exists()
