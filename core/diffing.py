"""Differences between two JSON documents: a list of changed paths, and side-by-side rows for the pages."""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from typing import Any


def error_path(loc: tuple[Any, ...]) -> str:
    """('default', 'rules', 0, 'threshold') -> 'default.rules[0].threshold'; the document itself is '$'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(part)):
            out += f".{part}" if out else str(part)
        else:  # pool names with '-' or '.', which a dotted path would make ambiguous
            out += f"[{str(part)!r}]"
    return out or "$"




def pretty(document: Any) -> str:
    # Sorted keys: PostgreSQL's jsonb keeps its own key order and a submitted document has the author's, so only a
    # canonical order lets the line diff show what changed rather than where keys happen to sit.
    return json.dumps(document, indent=2, ensure_ascii=False, sort_keys=True) if document is not None else ""


def changes(a: Any, b: Any, loc: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """Each difference as {path, op: added|removed|changed, before, after}, in document order."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[dict[str, Any]] = []
        for key in list(a) + [k for k in b if k not in a]:
            if key not in b:
                out.append({"path": error_path((*loc, key)), "op": "removed", "before": a[key], "after": None})
            elif key not in a:
                out.append({"path": error_path((*loc, key)), "op": "added", "before": None, "after": b[key]})
            else:
                out.extend(changes(a[key], b[key], (*loc, key)))
        return out
    if isinstance(a, list) and isinstance(b, list):
        out = []
        for i in range(max(len(a), len(b))):
            if i >= len(b):
                out.append({"path": error_path((*loc, i)), "op": "removed", "before": a[i], "after": None})
            elif i >= len(a):
                out.append({"path": error_path((*loc, i)), "op": "added", "before": None, "after": b[i]})
            else:
                out.extend(changes(a[i], b[i], (*loc, i)))
        return out
    # 1 and 1.0 are the same number in JSON; bool is not a number here (True == 1 in Python).
    if a == b and isinstance(a, bool) == isinstance(b, bool):
        return []
    return [{"path": error_path(loc), "op": "changed", "before": a, "after": b}]


def unified(a: Any, b: Any, label_a: str = "a", label_b: str = "b") -> str:
    return "".join(difflib.unified_diff(
        pretty(a).splitlines(keepends=True), pretty(b).splitlines(keepends=True), label_a, label_b))


@dataclass
class Row:
    left_no: int | None
    left: str
    right_no: int | None
    right: str
    kind: str  # same | changed | removed | added


def side_by_side(a: Any, b: Any) -> list[Row]:
    """Aligned rows of the two pretty-printed documents, for a two-column diff table."""
    left, right = pretty(a).splitlines(), pretty(b).splitlines()
    rows: list[Row] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, left, right, autojunk=False).get_opcodes():
        if tag == "equal":
            rows += [Row(i + 1, left[i], j + 1, right[j], "same") for i, j in zip(range(i1, i2), range(j1, j2),
                                                                                    strict=True)]
            continue
        span = max(i2 - i1, j2 - j1)
        for k in range(span):
            li, rj = i1 + k, j1 + k
            has_l, has_r = li < i2, rj < j2
            kind = "changed" if has_l and has_r else ("removed" if has_l else "added")
            rows.append(Row(li + 1 if has_l else None, left[li] if has_l else "",
                            rj + 1 if has_r else None, right[rj] if has_r else "", kind))
    return rows
