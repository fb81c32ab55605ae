"""The installed stack is the one requirements.lock pins, and it is consistent (`pip check`)."""

import subprocess
import sys
from importlib.metadata import distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def locked() -> dict[str, str]:
    """Package name (canonical) to the version requirements.lock pins."""
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, separator, version = line.partition("==")
            assert separator and version, f"requirements.lock: {line!r} is not a name==version pin"
            pins[canonicalize_name(name)] = version
    return pins


def installed() -> dict[str, str]:
    """Package name (canonical) to the version installed in the interpreter running the tests."""
    return {canonicalize_name(d.metadata["Name"]): d.version for d in distributions()}


def test_pip_check_finds_no_broken_requirement():
    result = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_locked_package_is_installed_at_its_locked_version():
    have = installed()
    wrong = {name: (version, have.get(name)) for name, version in locked().items() if have.get(name) != version}
    assert not wrong, f"locked version, installed version: {wrong}"


def test_the_lock_pins_every_installed_package():
    unpinned = sorted(set(installed()) - set(locked()))
    assert not unpinned, f"installed but not in requirements.lock: {unpinned}"


def test_the_lock_satisfies_every_direct_requirement():
    pins = locked()
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line.split("#")[0])
            name = canonicalize_name(requirement.name)
            assert name in pins, f"{requirement.name} (requirements.txt) is not in requirements.lock"
            assert requirement.specifier.contains(pins[name], prereleases=True), (
                f"requirements.lock pins {name}=={pins[name]}, outside {requirement} of requirements.txt"
            )
