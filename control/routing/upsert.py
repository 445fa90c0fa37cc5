"""The additive upsert of minute aggregates: a row per key, whose counters and histogram arrays each new batch adds
to (the request minutes, the gateway totals and a canary's per-arm minutes all grow this way)."""

from __future__ import annotations


def additive_upsert(table: str, keys: tuple[str, ...], counters: tuple[str, ...],
                    histograms: tuple[str, ...] = ()) -> str:
    """INSERT … ON CONFLICT (keys) DO UPDATE adding each counter and, element by element, each histogram array.
    Parameters: the keys, then the counters, then the histograms, in the order given."""
    columns = (*keys, *counters, *histograms)
    sets = [f"{c} = t.{c} + EXCLUDED.{c}" for c in counters]
    sets += [f"{h} = ARRAY(SELECT a + b FROM unnest(t.{h}, EXCLUDED.{h}) AS u(a, b))" for h in histograms]
    return (f"INSERT INTO {table} AS t ({', '.join(columns)})\n"
            f"VALUES ({', '.join(['%s'] * len(columns))})\n"
            f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET\n  " + ",\n  ".join(sets))
