"""Per-minute aggregates of the gateway's request log, and how far into the log the aggregation has got."""

from __future__ import annotations

from django.contrib.postgres.fields import ArrayField
from django.db import models

from control.routing import histogram


def _empty_histogram() -> list[int]:
    return histogram.empty()


class RequestMinute(models.Model):
    """One row per (minute, node, pool, class): counts, tokens and latency/TTFT histograms of routed requests.

    `node` is "" for requests no node served (shed with 429, nothing eligible). The histograms share fixed log
    buckets (control.routing.histogram), so any set of rows merges by adding bucket counts.
    """

    minute = models.DateTimeField(help_text="start of the minute (UTC)")
    node = models.CharField(max_length=120, blank=True)
    pool = models.CharField(max_length=120, blank=True)
    request_class = models.CharField(max_length=64, help_text="priority class")
    requests = models.BigIntegerField(default=0)
    status_2xx = models.BigIntegerField(default=0)
    status_4xx = models.BigIntegerField(default=0, help_text="4xx other than 429")
    status_429 = models.BigIntegerField(default=0)
    status_5xx = models.BigIntegerField(default=0)
    retries = models.BigIntegerField(default=0)
    cache_hits = models.BigIntegerField(default=0)
    cache_misses = models.BigIntegerField(default=0)
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    latency_ms_sum = models.FloatField(default=0.0)
    latency_buckets = ArrayField(models.BigIntegerField(), default=_empty_histogram)
    ttft_buckets = ArrayField(models.BigIntegerField(), default=_empty_histogram,
                              help_text="only requests that produced a first token")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["minute", "node", "pool", "request_class"], name="routing_minute_key"),
        ]
        indexes = [models.Index(fields=["minute"]), models.Index(fields=["node", "minute"])]


class StreamCursor(models.Model):
    """The last stream id folded into RequestMinute; written in the same transaction as the rows (exactly once)."""

    stream = models.CharField(max_length=64, primary_key=True)
    last_id = models.CharField(max_length=32, default="0-0")
    processed = models.BigIntegerField(default=0, help_text="entries aggregated since the beginning")
    skipped = models.BigIntegerField(default=0, help_text="malformed entries skipped")
    updated = models.DateTimeField(auto_now=True)


class RequestTotal(models.Model):
    """The whole fleet's routed requests per minute: RequestMinute summed over node, pool and class.

    Written in the same transaction as the RequestMinute rows (control.routing.aggregate), so the two never disagree;
    the overview's request-rate panel reads one row per minute here instead of one per node and class.
    """

    minute = models.DateTimeField(primary_key=True, help_text="start of the minute (UTC)")
    requests = models.BigIntegerField(default=0)
    status_429 = models.BigIntegerField(default=0)
    status_5xx = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
