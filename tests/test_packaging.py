"""What `pip install .` ships: the agent, the dashboard and the control plane, and no test doubles."""

from __future__ import annotations

from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]


def test_no_fake_or_test_module_ships_in_the_package() -> None:
    packages = find_packages(str(ROOT), include=["agents*", "core*", "dashboard*", "control*"])  # as pyproject.toml says
    assert "control.providers" in packages and not any(p.startswith("tests") for p in packages)
    shipped = [f for p in packages for f in (ROOT / p.replace(".", "/")).glob("*.py")]
    doubles = [str(f.relative_to(ROOT)) for f in shipped
               if f.stem.startswith(("fake", "test_", "mock")) or "class Fake" in f.read_text()]
    assert doubles == [], f"test doubles inside the installed package (move them under tests/): {doubles}"
