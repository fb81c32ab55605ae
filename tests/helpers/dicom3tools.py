"""dicom3tools' validators (dciodvfy, dcentvfy) as the tests run them: skipped when not installed, findings as lines."""

from __future__ import annotations

import shutil
import subprocess

import pytest


def validator(name: str) -> str:
    """The path of a dicom3tools program; the test is skipped, naming the package to install, when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed: apt-get install dicom3tools (Debian/Ubuntu)")
    return path


def findings(command: list[str]) -> list[str]:
    """The Error and Warning lines a dicom3tools validator prints (its report goes to stderr)."""
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith(("Error", "Warning"))]
