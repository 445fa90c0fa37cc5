"""Audited admin pages: every add/change made through the Django admin asks for a reason and writes an audit event.

The admin is one more way to change the fleet and its users, so it gets the same rule as the API and the pages:
the change and its audit event land in one transaction (the admin wraps each change view in one). Deleting through
the admin is switched off for these models: a deletion page has no place for a reason, and nodes leave through
drain/cordon, users through deactivation.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.forms.models import model_to_dict

from core.audit.context import Origin
from core.audit.record import record

REASON_FIELD = "audit_reason"
SECRET_FIELDS = {"password", "digest"}  # recorded as "changed", never as values


def snapshot(obj: Any) -> dict[str, Any]:
    """The model's editable fields, m2m as sorted names (e.g. a user's groups), secrets masked."""
    data = model_to_dict(obj)
    for key, value in list(data.items()):
        if key in SECRET_FIELDS:
            data[key] = "***"
        elif isinstance(value, list):
            data[key] = sorted(str(v) for v in value)
    return data


class AuditedAdmin(admin.ModelAdmin):
    """Mix in before the ModelAdmin class: `class NodeAdmin(AuditedAdmin, admin.ModelAdmin)`."""

    audit_kind = ""  # the action prefix and target kind, e.g. "node" -> node.update / node:gpu-a-1

    def get_form(self, request: Any, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        base = kwargs.get("form") or (getattr(self, "add_form", None) if obj is None else None) or self.form
        kwargs["form"] = type(f"Audited{base.__name__}", (base,), {
            REASON_FIELD: forms.CharField(
                label="Reason", max_length=2000, required=True,
                help_text="Why this change? It goes into the audit log with your name.",
                widget=forms.TextInput(attrs={"size": 70})),
        })
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fieldsets(self, request: Any, obj: Any = None) -> Any:
        fieldsets = list(super().get_fieldsets(request, obj))
        if not any(REASON_FIELD in (opts.get("fields") or ()) for _, opts in fieldsets):
            fieldsets.append(("Audit", {"fields": (REASON_FIELD,)}))
        return fieldsets

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def target_of(self, obj: Any) -> str:
        return f"{self.audit_kind}:{obj}"

    def save_model(self, request: Any, obj: Any, form: Any, change: bool) -> None:
        # The object as stored before this change (the form has already written the new values onto `obj`).
        request._audit_before = snapshot(type(obj).objects.get(pk=obj.pk)) if change else None
        super().save_model(request, obj, form, change)

    def after_save(self, obj: Any) -> None:
        """Hook: bring derived fields in line once everything (m2m included) is saved, before the audit snapshot."""

    def save_related(self, request: Any, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)  # m2m (a user's groups) are saved here
        obj = form.instance
        self.after_save(obj)
        before, after = getattr(request, "_audit_before", None), snapshot(obj)
        if change and before == after:
            return  # saved without changes: nothing happened, nothing to audit
        action = f"{self.audit_kind}.{'update' if change else 'create'}"
        changed = sorted(k for k in after if before is None or before.get(k) != after.get(k))
        record(Origin.from_request(request), action, self.target_of(obj), form.cleaned_data[REASON_FIELD],
               before=before, after=after, details={"via": "admin", "fields": changed})


class ReadOnlyAdmin(admin.ModelAdmin):
    """Browse only: for records that change through audited code paths (or never), not through admin forms."""

    def has_add_permission(self, request: Any) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False
