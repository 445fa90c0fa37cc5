"""Append-only audit trail: every change an operator or the controller makes, with who, why and from where."""
