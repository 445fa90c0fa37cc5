"""Cloud providers that scale a pool: `local` (the simulated fleet), `kubernetes`, `aws`, `azure`.

Each lives in its own package behind the small interface in `base` (see docs/providers.md):

    from control.providers import registry
    provider = registry.get("aws", {"asg": "gpu-pool-a"})
    provider.set_desired_size(4)
"""

from control.providers.base import Instance, Provider, ProviderError, Size
from control.providers.registry import KINDS, ConfigError, get, validate_config

__all__ = ["KINDS", "ConfigError", "Instance", "Provider", "ProviderError", "Size", "get", "validate_config"]
