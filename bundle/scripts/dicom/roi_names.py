"""ROI and segment names to the label map's structures, through a pattern file users can extend."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from scripts.bundle_config import BUNDLE_DIR
from scripts.data.labels import LABELS

#: The bundle's name patterns (configs/roi_names.json).
DEFAULT_ROI_NAMES = BUNDLE_DIR / "configs" / "roi_names.json"


def normalise_roi_name(name: str) -> str:
    """Lower case, every run of characters other than letters and digits made one space: 'Lung_R ' -> 'lung r'."""
    return re.sub(r"[^a-z0-9]+", " ", name.lower()).strip()


def read_patterns(path: str | Path) -> list[tuple[re.Pattern, str]]:
    """(compiled pattern, structure) pairs of one pattern file, in file order; errors name the file and the entry."""
    path = Path(path)
    try:
        patterns = json.loads(path.read_text())["patterns"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a ROI name file (a JSON object with 'patterns'): {error}") from error
    rules = []
    for structure, expressions in patterns.items():
        if structure not in LABELS or structure == "background":
            raise ValueError(
                f"{path}: unknown structure '{structure}'; use one of {[s for s in LABELS if s != 'background']}"
            )
        if not isinstance(expressions, list):
            raise ValueError(f"{path}: patterns of '{structure}' must be a list of regular expressions")
        for expression in expressions:
            try:
                rules.append((re.compile(expression), structure))
            except (re.error, TypeError) as error:
                raise ValueError(
                    f"{path}: pattern {expression!r} of '{structure}' is not a regular expression: {error}"
                ) from error
    return rules


@dataclass(frozen=True)
class RoiNames:
    """Ordered (pattern, structure) rules; the first pattern matching the whole normalised name decides."""

    rules: tuple[tuple[re.Pattern, str], ...]

    def structure(self, name: str) -> str | None:
        """The structure `name` stands for, or None when no pattern matches."""
        normalised = normalise_roi_name(name)
        return next((structure for pattern, structure in self.rules if pattern.fullmatch(normalised)), None)


def load_roi_names(extra: str | Path | None = None) -> RoiNames:
    """The bundle's rules, after those of the user's file `extra` (tried first) when given."""
    user = read_patterns(extra) if extra is not None else []
    return RoiNames(tuple(user + read_patterns(DEFAULT_ROI_NAMES)))
