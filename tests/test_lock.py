"""requirements/lock.txt (scripts/lock.sh) against what is installed: scripts/install.sh installs with the lock
as constraints, so every locked package that is installed must have the locked version."""
import importlib.metadata
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"
KEY = ("torch", "transformers", "deepspeed", "ray", "numpy")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")


def parse_lock(text: str) -> dict[str, str]:
    """{canonical name: version} of a lock's `name==version` lines; anything else (bar comments) is an error."""
    pins = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = PIN.match(line)
        assert m, f"not an exact pin: {line!r}"
        pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def mismatches(pins: dict[str, str], key=KEY) -> list[str]:
    """What differs from the lock: a locked package installed at another version, or a key package that is
    not locked or not installed. `==2.13.0` accepts a local label (2.13.0+cpu), as pip does."""
    bad = []
    for name, version in pins.items():
        have = installed_version(name)
        if have is not None and not SpecifierSet(f"=={version}").contains(have, prereleases=True):
            bad.append(f"{name}: locked {version}, installed {have}")
    for name in key:
        if name not in pins:
            bad.append(f"{name}: not in the lock")
        elif installed_version(name) is None:
            bad.append(f"{name}: locked {pins[name]}, not installed")
    return bad


def test_installed_versions_match_the_lock():
    pins = parse_lock(LOCK.read_text())
    assert len(pins) > 50  # a full freeze, not a hand-written subset
    assert pins["torch"] == "2.13.0"
    assert "arbor-rl" not in pins  # the project itself is installed editable, not locked
    bad = mismatches(pins)
    assert not bad, "installed packages differ from requirements/lock.txt (bash scripts/install.sh):\n" + "\n".join(bad)


def test_mismatches_are_found():
    numpy = installed_version("numpy")
    assert numpy is not None
    assert mismatches({name: installed_version(name) for name in KEY}) == []
    assert mismatches({**{name: installed_version(name) for name in KEY}, "numpy": "0.0.1"}) == [
        f"numpy: locked 0.0.1, installed {numpy}"]
    assert mismatches({"numpy": numpy}, key=("numpy", "ray")) == ["ray: not in the lock"]
    assert mismatches({"no-such-package-xyz": "1.0"}, key=("no-such-package-xyz",)) == [
        "no-such-package-xyz: locked 1.0, not installed"]
    with pytest.raises(AssertionError, match="not an exact pin"):
        parse_lock("numpy>=2\n")


def test_every_dependency_is_locked():
    """A dependency added to pyproject.toml without rerunning scripts/lock.sh shows up here."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]
    pins = parse_lock(LOCK.read_text())
    missing = [str(r) for r in reqs if canonicalize_name(r.name) not in pins]
    assert not missing, f"not in requirements/lock.txt (bash scripts/lock.sh): {missing}"
    outside = [f"{r.name}=={pins[canonicalize_name(r.name)]} (pyproject: {r})" for r in reqs
               if not r.specifier.contains(pins[canonicalize_name(r.name)], prereleases=True)]
    assert not outside, f"locked outside pyproject.toml's ranges: {outside}"
