"""The `local` provider: the simulated fleet's control API (`manage.py simfleet`, agents/sim/control.py)."""

from control.providers.base import Field, between, http_url, pattern, timeout_field

FIELDS = (
    Field("url", "the simulated fleet's control API", default="http://127.0.0.1:8399", check=http_url),
    # Which profiles exist is the fleet's business (it answers with the list when one is unknown), so only the
    # shape is checked here.
    Field("profile", "the GPU profile of new nodes (h100, a100, l40s or mixed); the fleet's default when unset",
          check=pattern(r"[a-z0-9][a-z0-9_-]{0,31}", "must be a profile name such as h100, a100, l40s or mixed")),
    Field("boot_delay_s", "seconds a new node takes to boot before it serves", "number", default=30.0,
          check=between(0, 3600, low_allowed=True)),
    timeout_field(5.0),
)
SECRETS_HINT = "the local provider needs no credentials"
