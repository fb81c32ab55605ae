"""Virtual-patient cohort bookkeeping: the spec, each patient's plan and seeds, the split over ranks (the cohort's
folder is scripts/sampling/cohort_files.py's). Pure Python; scripts/sampling/cohort.py draws the patients.

Seeds: attempt `a` (0-based) of patient `i` (0-based) draws with `spec.seed + i + a * spec.patients`. Every attempt of
every patient of a cohort has its own seed, it depends on the spec alone (not on how the patients are split over
ranks), and raising `max_attempts` keeps the seeds of the earlier attempts.

Counts are exact: round(unconditional_share * patients) patients have no tumor and round(left_share * tumor patients)
tumors lie in the left lung (Python's round: halves to even); which patient gets which, and the diameters, come from
numpy's default_rng(spec.seed).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import yaml

#: The keys of a spec, of its `tumor` mapping and of `tumor.diameter_mm`.
SPEC_KEYS = (
    "patients",
    "seed",
    "tumor",
    "unconditional_share",
    "formats",
    "max_attempts",
    "num_inference_steps",
    "id_prefix",
)
TUMOR_KEYS = ("diameter_mm", "left_share")
DIAMETER_KEYS = ("min", "max")

#: The formats a cohort writes; NIfTI always, since the DICOM is made from it.
FORMATS = ("nifti", "dicom")
DIAMETER_LIMITS_MM = (5.0, 100.0)
DEFAULT_DIAMETER_MM = (10.0, 70.0)
#: Torch seeds its generators with 64-bit integers: every seed of a cohort must stay below this.
SEED_LIMIT = 2**63
ID_PREFIX_PATTERN = re.compile(r"[A-Za-z0-9-]+")


@dataclass(frozen=True)
class CohortSpec:
    """A checked cohort spec (read_spec makes one); `to_dict` is its canonical form, the cohort's identity."""

    patients: int
    seed: int = 0
    diameter_mm: tuple[float, float] = DEFAULT_DIAMETER_MM
    left_share: float = 0.5
    unconditional_share: float = 0.0
    formats: tuple[str, ...] = FORMATS
    max_attempts: int = 5
    num_inference_steps: int | None = None
    id_prefix: str = "SYN"

    def to_dict(self) -> dict[str, Any]:
        """The spec with every default filled in, as JSON-able keys a spec file takes back."""
        low, high = self.diameter_mm
        return {
            "patients": self.patients,
            "seed": self.seed,
            "tumor": {"diameter_mm": {"min": low, "max": high}, "left_share": self.left_share},
            "unconditional_share": self.unconditional_share,
            "formats": list(self.formats),
            "max_attempts": self.max_attempts,
            "num_inference_steps": self.num_inference_steps,
            "id_prefix": self.id_prefix,
        }


@dataclass(frozen=True)
class TumorPlan:
    """The tumor a patient gets: the lung it lies in ("left" or "right") and its diameter (mm, to 0.1 mm)."""

    side: str
    diameter_mm: float


@dataclass(frozen=True)
class PatientPlan:
    """One patient of a cohort: its place, id, tumor (None: drawn without one) and where its seeds start."""

    index: int
    patient_id: str
    tumor: TumorPlan | None
    first_seed: int
    cohort_size: int

    def seeds(self, max_attempts: int) -> list[int]:
        """The seeds to try in order, `first_seed + a * cohort_size` for attempt a: unique across the cohort."""
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        return [self.first_seed + a * self.cohort_size for a in range(max_attempts)]


def dotted(parent: str, key: Any) -> str:
    """The dotted place of `key` under `parent` ("" for the top of the spec)."""
    return f"{parent}.{key}" if parent else str(key)


def _mapping(value: Any, key: str, allowed: tuple[str, ...]) -> Mapping:
    """`value` as a mapping of `allowed` keys only, so a misspelt key is refused rather than ignored."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{key or 'the spec'} must be a mapping, got {value!r}")
    unknown = [dotted(key, k) for k in value if k not in allowed]
    if unknown:
        where = f" under {key}" if key else ""
        raise ValueError(f"unknown key {', '.join(unknown)}; allowed{where}: {', '.join(allowed)}")
    return value


def _integer(value: Any, key: str, minimum: int) -> int:
    """`value` as an integer of at least `minimum` (a bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{key} must be at least {minimum}, got {value}")
    return value


def _steps(value: Any, key: str) -> int | None:
    """Sampling steps: an integer of at least 1, or None for the model's default."""
    return None if value is None else _integer(value, key, 1)


def _number(value: Any, key: str, low: float, high: float, unit: str = "") -> float:
    """`value` as a finite number within `low`-`high` (a bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{key} must be a number, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{key} must be within {low:g}-{high:g}{unit}, got {value}")
    return float(value)


def _share(value: Any, key: str) -> float:
    """A share of patients, 0-1."""
    return _number(value, key, 0.0, 1.0)


def _diameters(value: Any, key: str) -> tuple[float, float]:
    """Tumor diameters as (min, max) mm, from `{min, max}` or a single number (a fixed diameter)."""
    if not isinstance(value, Mapping):
        fixed = _number(value, key, *DIAMETER_LIMITS_MM, " mm")
        return fixed, fixed
    bounds = _mapping(value, key, DIAMETER_KEYS)
    missing = [dotted(key, k) for k in DIAMETER_KEYS if k not in bounds]
    if missing:
        raise ValueError(f"{', '.join(missing)} missing: give both min and max, or a single number")
    low, high = (_number(bounds[k], dotted(key, k), *DIAMETER_LIMITS_MM, " mm") for k in DIAMETER_KEYS)
    if low > high:
        raise ValueError(f"{key}.min ({low:g} mm) is above {key}.max ({high:g} mm)")
    return low, high


def _formats(value: Any, key: str) -> tuple[str, ...]:
    """The formats to write, in FORMATS order; NIfTI must be among them since the DICOM is made from it."""
    if not isinstance(value, list) or not all(isinstance(f, str) for f in value):
        raise ValueError(f"{key} must be a list of {', '.join(FORMATS)}, got {value!r}")
    unknown = sorted(set(value) - set(FORMATS))
    if unknown:
        raise ValueError(f"{key}: unknown format {', '.join(unknown)}; allowed: {', '.join(FORMATS)}")
    if "nifti" not in value:
        raise ValueError(f"{key} must include nifti: the NIfTI is always written and the DICOM is made from it")
    return tuple(f for f in FORMATS if f in value)


def _id_prefix(value: Any, key: str) -> str:
    """The patient ids' prefix: letters, digits and '-', so an id is a safe folder name and DICOM PatientID."""
    if not isinstance(value, str) or not ID_PREFIX_PATTERN.fullmatch(value):
        raise ValueError(f"{key} must be letters, digits and '-', got {value!r}")
    return value


#: How each CohortSpec field is checked, given its value and dotted key.
_FIELD_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "patients": partial(_integer, minimum=1),
    "seed": partial(_integer, minimum=0),
    "diameter_mm": _diameters,
    "left_share": _share,
    "unconditional_share": _share,
    "formats": _formats,
    "max_attempts": partial(_integer, minimum=1),
    "num_inference_steps": _steps,
    "id_prefix": _id_prefix,
}


def spec_from_dict(raw: Any) -> CohortSpec:
    """A CohortSpec from a spec's parsed content, every key checked; a ValueError names the dotted key."""
    top = dict(_mapping(raw, "", SPEC_KEYS))
    if "patients" not in top:
        raise ValueError("patients missing: the number of patients that must pass the quality filter")
    tumor = _mapping(top.pop("tumor", {}), "tumor", TUMOR_KEYS)
    places = {**{k: k for k in top}, **{k: dotted("tumor", k) for k in tumor}}
    given = {**top, **tumor}
    spec = CohortSpec(**{name: _FIELD_CHECKS[name](given[name], places[name]) for name in given})
    last_seed = spec.seed + spec.patients * spec.max_attempts - 1
    if last_seed >= SEED_LIMIT:
        raise ValueError(f"seed {spec.seed} is too large: the cohort's last seed ({last_seed}) must stay below 2**63")
    return spec


def _load_spec_file(path: Path) -> Any:
    """The parsed content of a .yaml/.yml (safe_load) or .json spec file."""
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".json"):
        raise ValueError("must be a .yaml, .yml or .json file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read it ({error})") from None
    try:
        return json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"not valid {'JSON' if suffix == '.json' else 'YAML'} ({error})") from None


def read_spec(path: str | Path) -> CohortSpec:
    """The cohort spec of a YAML or JSON file, checked whole so a bad one is refused before any patient is drawn."""
    try:
        return spec_from_dict(_load_spec_file(Path(path)))
    except ValueError as error:
        raise ValueError(f"cohort spec {path}: {error}") from None


def plan_cohort(spec: CohortSpec) -> list[PatientPlan]:
    """The patients of `spec`, the same on every call and every rank: exact counts, seeded sides and diameters."""
    rng = np.random.default_rng(spec.seed)
    unconditional = round(spec.unconditional_share * spec.patients)
    tumors = spec.patients - unconditional
    left = round(spec.left_share * tumors)
    kinds = [None] * unconditional + ["left"] * left + ["right"] * (tumors - left)
    sides = [kinds[j] for j in rng.permutation(spec.patients)]
    low, high = spec.diameter_mm
    diameters = np.clip(np.round(rng.uniform(low, high, spec.patients), 1), low, high)
    return [
        PatientPlan(
            index=i,
            patient_id=f"{spec.id_prefix}-{i + 1:04d}",
            tumor=None if side is None else TumorPlan(side, float(diameter)),
            first_seed=spec.seed + i,
            cohort_size=spec.patients,
        )
        for i, (side, diameter) in enumerate(zip(sides, diameters, strict=True))
    ]


def _check_rank(rank: int, world_size: int, rank_name: str, world_name: str) -> None:
    """Refuse a world size under 1 or a rank outside 0 to world size - 1, naming the offending value."""
    if world_size < 1:
        raise ValueError(f"{world_name} must be at least 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"{rank_name} must be within 0-{world_size - 1} ({world_name} {world_size}), got {rank}")


def patients_of_rank(plans: list[PatientPlan], rank: int, world_size: int) -> list[PatientPlan]:
    """The patients rank `rank` of `world_size` draws: patient i goes to rank i % world_size."""
    _check_rank(rank, world_size, "rank", "world_size")
    return [plan for plan in plans if plan.index % world_size == rank]


def _environment_integer(name: str, default: int) -> int:
    """The integer in environment variable `name`, or `default` when it is unset."""
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {text!r}") from None


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size from torchrun's RANK and WORLD_SIZE (0 and 1 without torchrun)."""
    rank, world_size = _environment_integer("RANK", 0), _environment_integer("WORLD_SIZE", 1)
    _check_rank(rank, world_size, "RANK", "WORLD_SIZE")
    return rank, world_size
