"""User API tokens: list, issue (shown once) and revoke, each issue and revoke audited."""
