"""Python the bundle's configs import, one package per pipeline stage; see docs/README.md for the layout.

Configs import `scripts` alone (`$import scripts`) and name `scripts.<stage>.<Name>`: a stage package
is imported the first time a config touches it, so a training run never loads the DICOM or sampling code.
"""

import importlib
from types import ModuleType

#: The stage packages, from the bottom of the pipeline up.
STAGES = ("data", "dicom", "transforms", "networks", "training", "sampling", "evaluation", "phantoms")


def __getattr__(name: str) -> ModuleType:
    if name in STAGES:
        return importlib.import_module(f"scripts.{name}")
    raise AttributeError(f"module 'scripts' has no attribute {name!r}")
