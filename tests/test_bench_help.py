"""Every bench script answers --help with its whole usage: an operator's first step with a bench is --help, and a stray
"%" in a help text made argparse crash there instead (bench/routing.py, until stop 26)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p for p in (ROOT / "bench").glob("*.py") if '__name__ == "__main__"' in p.read_text())


def test_the_benches_are_found() -> None:
    assert len(SCRIPTS) >= 10 and ROOT / "bench" / "routing.py" in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help_prints_the_usage_and_exits_0(script: Path) -> None:
    r = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("usage:") and "--help" in r.stdout, r.stdout[:500]
