"""Policy documents (scheduler, scaling, priorities, power, alerts) with immutable revisions and rollback."""
