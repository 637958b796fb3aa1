"""Static checks of the source tree: flake8, and the one-way import rule of DESIGN.md."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ["folk_ros", "training", "test", "bench", "demo", "launch"]


@pytest.mark.linter
def test_flake8():
    dirs = [d for d in SOURCE_DIRS if (REPO / d).is_dir()]
    proc = subprocess.run([sys.executable, "-m", "flake8", *dirs, "setup.py"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"flake8 found problems:\n{proc.stdout}{proc.stderr}"


@pytest.mark.linter
def test_flake8_exclude_skips_no_source_file():
    """A bare name in flake8's exclude matches that folder anywhere (``data`` once hid training/data/)."""
    import configparser
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    bare = {p.strip() for p in cfg["flake8"]["exclude"].split(",") if p.strip() and "/" not in p}
    hidden = [str(path.relative_to(REPO)) for d in SOURCE_DIRS for path in (REPO / d).rglob("*.py")
              if bare & set(path.relative_to(REPO).parts[:-1])]
    assert not hidden, f"flake8's exclude {sorted(bare)} skips source files: {hidden[:5]}"


@pytest.mark.linter
def test_every_declared_pytest_marker_is_applied():
    """A marker declared in setup.cfg selects tests (``-m "not ros"``) only when some test carries it."""
    import configparser
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    declared = [line.split(":")[0].strip() for line in cfg["tool:pytest"]["markers"].strip().splitlines()]
    text = "\n".join(p.read_text(encoding="utf-8") for p in (REPO / "test").glob("*.py"))
    unused = [m for m in declared if f"pytest.mark.{m}" not in text]
    assert not unused, f"markers declared in setup.cfg but applied to no test: {unused}"


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _offenders(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in sorted((REPO / folder).rglob("*.py")):
        for mod in _imported_modules(path):
            if mod.split(".")[0] in forbidden or mod.startswith(forbidden):
                bad.append(f"{path.relative_to(REPO)} imports {mod}")
    return bad


@pytest.mark.linter
def test_core_has_no_ros_imports():
    ros = ("rclpy", "rosidl_runtime_py", "sensor_msgs", "std_msgs", "geometry_msgs",
           "visualization_msgs", "builtin_interfaces", "folk_ros_interfaces", "folk_ros.ros")
    assert _offenders("folk_ros/core", ros) == []


@pytest.mark.linter
def test_runtime_never_imports_training():
    assert _offenders("folk_ros", ("training",)) == []


def test_importing_core_loads_no_ros():
    code = ("import importlib, pkgutil, sys, folk_ros.core as c\n"
            "for m in pkgutil.walk_packages(c.__path__, 'folk_ros.core.'):\n"
            "    importlib.import_module(m.name)\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('rclpy', 'training')]\n"
            "print(bad); sys.exit(1 if bad else 0)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
