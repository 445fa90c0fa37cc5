"""Routed-request log aggregated per minute, and the routing page."""
