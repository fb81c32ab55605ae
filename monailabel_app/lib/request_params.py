"""Reading one parameter of an /infer request: checked for type and range, refused with a message that names it.

MONAI Label merges the form's `params` JSON into the request dict, so every value here came from the
client. A refusal is a `RequestError`, which the app turns into an HTTP 4xx inside the request.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


class RequestError(ValueError):
    """A request the app refuses: `status` is the HTTP status (4xx) and the message starts with the parameter's name."""

    def __init__(self, name: str, message: str, status: int = 400) -> None:
        super().__init__(f"{name}: {message}")
        self.name, self.status = name, status


def shown(value: Any, limit: int = 60) -> str:
    """`repr(value)` cut to `limit` characters, so a refusal never echoes a huge input."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def provided(request: Mapping[str, Any], name: str, default: Any) -> Any:
    """`request[name]`, or `default` when it is absent or null."""
    value = request.get(name)
    return default if value is None else value


def is_number(value: Any) -> bool:
    """A JSON number that is finite (bool is not a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def integer(request: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    """The integer parameter `name`, refused unless it is a JSON integer in [low, high]."""
    value = provided(request, name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(name, f"must be an integer, got {shown(value)}")
    if not low <= value <= high:
        raise RequestError(name, f"must be between {low} and {high}, got {value}")
    return value


def number(request: Mapping[str, Any], name: str, default: float, low: float, high: float) -> float:
    """The numeric parameter `name`, refused unless it is a finite JSON number in [low, high]."""
    value = provided(request, name, default)
    if not is_number(value):
        raise RequestError(name, f"must be a number, got {shown(value)}")
    if not low <= value <= high:
        raise RequestError(name, f"must be between {low} and {high}, got {value}")
    return float(value)


def choice(request: Mapping[str, Any], name: str, default: str, choices: Sequence[str]) -> str:
    """The parameter `name`, refused unless it is one of `choices`."""
    value = provided(request, name, default)
    if not isinstance(value, str) or value not in choices:
        raise RequestError(name, f"must be one of {list(choices)}, got {shown(value)}")
    return value


def points(request: Mapping[str, Any], name: str, max_points: int) -> list[tuple[float, float, float]]:
    """The parameter `name` as up to `max_points` points of three finite numbers ([] when absent)."""
    value = provided(request, name, [])
    if not isinstance(value, list) or len(value) > max_points:
        raise RequestError(name, f"must be a list of at most {max_points} points [i, j, k], got {shown(value)}")
    for point in value:
        if not isinstance(point, list) or len(point) != 3 or not all(map(is_number, point)):
            raise RequestError(name, f"each point must be three numbers [i, j, k], got {shown(point)}")
    return [tuple(float(c) for c in point) for point in value]
