"""Safe summary/description templates: `{labels.node}`, `{value}`, `{value:.1f}`, `{threshold}`, `{rule}`.

No Jinja, no str.format on user text (that can reach attributes: "{0.__class__}"): placeholders are matched by one
regular expression against a fixed list of names, and a template with anything else is refused by the schema
with its path. `{{` and `}}` are literal braces.
"""

from __future__ import annotations

import re
from typing import Any

LABELS = ("alertname", "severity", "pool", "node", "gpu")
FIELDS = ("value", "threshold", "rule", "metric", "severity", "scope")
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_NAME = re.compile(r"^(labels\.(?P<label>[a-z]+)|(?P<field>[a-z]+))(:(?P<spec>[^{}]*))?$")
_SPEC = re.compile(r"^\.?\d{0,2}[fge%]?$")  # e.g. .1f, .0f, g, %: numbers only


def check(template: str) -> str:
    """The template if it only uses known placeholders; ValueError naming the first bad one otherwise."""
    for m in _TOKEN.finditer(template):
        token = m.group(0)
        if token in ("{{", "}}"):
            continue
        if token in ("{", "}"):
            raise ValueError(f"unmatched {token!r} at position {m.start()}; write {token * 2!r} for a literal brace")
        inner = m.group(1)
        parsed = _NAME.match(inner)
        if parsed is None:
            raise ValueError(f"unknown placeholder {token}; use {{value}}, {{threshold}}, {{rule}}, {{metric}} or "
                             f"{{labels.<{'|'.join(LABELS)}>}}")
        label, field, spec = parsed.group("label"), parsed.group("field"), parsed.group("spec")
        if label is not None and label not in LABELS:
            raise ValueError(f"unknown label in {token}; the labels are {', '.join(LABELS)}")
        if field is not None and field not in FIELDS:
            raise ValueError(f"unknown placeholder {token}; the fields are {', '.join(FIELDS)} and labels.<name>")
        if spec is not None and (field not in ("value", "threshold") or not _SPEC.match(spec)):
            raise ValueError(f"bad format in {token}: only {{value}} and {{threshold}} take a number format "
                             "such as :.1f")
    return template


def _number(value: Any, spec: str | None) -> str:
    if value is None:
        return "n/a"
    try:
        return format(float(value), spec or "g")
    except (TypeError, ValueError):
        return str(value)


def render(template: str, labels: dict[str, str], context: dict[str, Any]) -> str:
    """Fill a template checked by `check()` (an unknown placeholder, should one get through, renders as '')."""

    def fill(m: re.Match[str]) -> str:
        token = m.group(0)
        if token in ("{{", "}}"):
            return token[0]
        if m.group(1) is None:
            return token
        parsed = _NAME.match(m.group(1))
        if parsed is None:
            return ""
        if parsed.group("label"):
            return str(labels.get(parsed.group("label"), ""))
        field = parsed.group("field")
        if field in ("value", "threshold"):
            return _number(context.get(field), parsed.group("spec"))
        return str(context.get(field, ""))

    return _TOKEN.sub(fill, template)
