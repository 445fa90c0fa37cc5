"""Partitioned raw and rollup tables, generated from the metric catalogue (see dashboard/metrics/schema.py).

A metric added to the catalogue later needs its own migration (ALTER TABLE .. ADD COLUMN IF NOT EXISTS on the
parent tables, which PostgreSQL propagates to every partition).
"""

from django.db import migrations

from dashboard.metrics import schema


def create_partitions(apps, schema_editor):  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime, timedelta

    from dashboard.metrics import partitions

    partitions.ensure_partitions(datetime.now(UTC).date() - timedelta(days=1), 4)


class Migration(migrations.Migration):
    initial = True
    dependencies = [("fleet", "0001_initial")]

    operations = [
        migrations.RunSQL(
            "".join(schema.create_sql(t) for t in schema.ALL_TABLES)
            + "CREATE TABLE IF NOT EXISTS metrics_rollup_state (name text PRIMARY KEY, done_until timestamptz);",
            "".join(schema.drop_sql(t) for t in schema.ALL_TABLES) + "DROP TABLE IF EXISTS metrics_rollup_state;",
        ),
        migrations.RunPython(create_partitions, migrations.RunPython.noop),
    ]
