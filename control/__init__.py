"""Switchyard's control plane: policies with revisions, the audit trail, node actions and their API and pages."""
