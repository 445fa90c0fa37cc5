"""The fleet's minute table (dashboard/metrics/fleet_rollup.py), backfilled from the minute rollups already there."""

from django.db import migrations

from dashboard.metrics import fleet_rollup

BACKFILL = fleet_rollup.REBUILD_SQL.replace("%(lo)s", "'-infinity'").replace("%(hi)s", "'infinity'")


class Migration(migrations.Migration):
    dependencies = [("metrics", "0001_sample_tables")]

    operations = [
        migrations.RunSQL(fleet_rollup.CREATE_SQL + BACKFILL, fleet_rollup.DROP_SQL),
    ]
