"""The load generator: open-loop Poisson arrivals against an OpenAI-compatible URL (the gateway or one node)."""
