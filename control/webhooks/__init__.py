"""Webhook receivers, the one outbound sender, signatures, and the events receivers subscribe to."""
