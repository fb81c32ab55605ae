"""The random anatomy of one phantom, the HU of its tissues, and the voxel grid and chest shape the others draw on."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

# Hounsfield units of the tissues the phantom draws.
HU = {
    "air": -1000.0,
    "fat": -100.0,
    "muscle": 45.0,
    "mediastinum": 35.0,
    "abdomen": 55.0,
    "lung": -860.0,
    "vessel": 40.0,
    "heart": 40.0,
    "esophagus": 35.0,
    "cancellous_bone": 220.0,
    "cortical_bone": 650.0,
    "bronchial_wall": 30.0,
    "fissure": -500.0,  # the two pleural layers between lobes, thinner than a voxel
    "disc": 90.0,
    "csf": 15.0,
    "cord": 35.0,
    "tumor": 35.0,
    "table_shell": 250.0,
    "table_core": -850.0,
    "cushion": -300.0,  # a dense foam pad
}


@dataclass(frozen=True)
class Anatomy:
    """The random parameters of one phantom (millimetres unless named otherwise)."""

    field_of_view: float  # in-plane extent of the image
    z_start: float  # lowest slice, relative to the lung base
    z_end: float  # highest slice
    lung_height: float  # lung base to apex
    half_width: float  # lateral semi-axis of the chest
    half_depth: float  # antero-posterior semi-axis of the chest
    shoulder_extra: float  # how much wider the shoulders are than the chest
    body_y: float  # vertical position of the chest centre in the image
    fat: float  # subcutaneous fat thickness
    muscle: float  # chest wall thickness inside the fat
    table_gap: float  # between the back and the table top: air, or the cushion when there is one
    cushion: bool  # a dense positioning cushion joins the back to the table
    arms: str  # "up" (beside the head), "beside" (along the chest) or "out" (out of the field of view)
    tumor_diameters: tuple[float, ...]  # GTV-1 first, largest
    noise_hu: float  # standard deviation of the image noise
    detail_seed: int  # seeds the fine detail (vessel and bronchial trees, fissures, texture), the same at every size

    @property
    def chest_axes(self) -> tuple[float, float]:
        """Lateral and antero-posterior semi-axes of the chest cavity below the shoulders."""
        return self.half_width - self.fat - self.muscle, self.half_depth - self.fat - self.muscle


def draw_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one case's anatomy; ranges follow adult chest CTs of radiotherapy patients."""
    lung_height = rng.uniform(215.0, 265.0)
    cushion = bool(rng.random() < 0.4)
    arms = str(rng.choice(["up", "beside", "out"], p=[0.5, 0.3, 0.2]))
    n_tumors = int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]))
    primary = rng.uniform(18.0, 65.0)
    others = sorted((rng.uniform(8.0, min(primary, 25.0)) for _ in range(n_tumors - 1)), reverse=True)
    return Anatomy(
        field_of_view=rng.uniform(400.0, 480.0) + (60.0 if arms == "beside" else 0.0),
        z_start=rng.uniform(-80.0, -15.0),
        z_end=lung_height + rng.uniform(-5.0, 80.0),
        lung_height=lung_height,
        half_width=rng.uniform(140.0, 172.0),
        half_depth=rng.uniform(95.0, 122.0),
        shoulder_extra=rng.uniform(20.0, 38.0),
        body_y=rng.uniform(-35.0, 30.0),
        fat=rng.uniform(6.0, 24.0),
        muscle=rng.uniform(12.0, 20.0),
        table_gap=rng.uniform(8.0, 20.0) if cushion else rng.uniform(0.0, 6.0),
        cushion=cushion,
        arms=arms,
        tumor_diameters=(primary, *others),
        noise_hu=rng.uniform(8.0, 20.0),
        detail_seed=int(rng.spawn(1)[0].integers(2**63)),  # a child stream: the draws after it stay as they were
    )


def check_size(size: int | Sequence[int]) -> int | tuple[int, int, int]:
    """`size` as one int (in-plane voxels, slices at least 3 mm apart) or [nx, ny, nz]; else a ValueError naming it."""
    values = list(size) if isinstance(size, (list, tuple)) else [size]
    if len(values) not in (1, 3) or not all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values
    ):
        raise ValueError(f"size must be one positive int or three, [nx, ny, nz], got {size!r}")
    if not all(16 <= v <= 512 for v in values[:2]):
        raise ValueError(f"size must be between 16 and 512 voxels in-plane, got {size!r}")
    if len(values) == 1:
        return int(values[0])
    if not 8 <= values[2] <= 512:
        raise ValueError(f"size must have between 8 and 512 slices (nz), got {size!r}")
    return int(values[0]), int(values[1]), int(values[2])


def _step(z: np.ndarray, centre: float, width: float) -> np.ndarray:
    """A smooth 0-to-1 step at `centre`."""
    return 1.0 / (1.0 + np.exp(-(z - centre) / width))


def superellipse(
    dx: np.ndarray, dy: np.ndarray, a: float | np.ndarray, b: float | np.ndarray, power: float | np.ndarray = 2.4
) -> np.ndarray:
    """Normalised radius of the superellipse |dx/a|^p + |dy/b|^p (1 on the outline)."""
    return (np.abs(dx / a) ** power + np.abs(dy / b) ** power) ** (1.0 / power)


class Grid:
    """Voxel grid of one phantom: shape, spacing and broadcastable RAS coordinates in mm."""

    def __init__(self, anatomy: Anatomy, size: int | Sequence[int], rng: np.random.Generator) -> None:
        size = check_size(size)
        fov, extent = anatomy.field_of_view, anatomy.z_end - anatomy.z_start
        if isinstance(size, int):
            spacing_z = max(3.0, fov / size * rng.uniform(0.8, 1.0))
            size = (size, size, max(8, int(round(extent / spacing_z))))
        else:
            spacing_z = extent / size[2]
        self.shape = size
        self.spacing = (fov / size[0], fov / size[1], spacing_z)
        self.origin = np.array([-fov / 2.0 + self.spacing[0] / 2, -fov / 2.0 + self.spacing[1] / 2, anatomy.z_start])
        self.x, self.y, self.z = (
            (self.origin[axis] + self.spacing[axis] * np.arange(n, dtype=np.float32)).reshape(
                [-1 if a == axis else 1 for a in range(3)]
            )
            for axis, n in enumerate(self.shape)
        )

    @property
    def points(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.x, self.y, self.z

    @property
    def affine(self) -> np.ndarray:
        affine = np.diag([*self.spacing, 1.0])
        affine[:3, 3] = self.origin
        return affine

    def sigma_vox(self, sigma_mm: float) -> tuple[float, float, float]:
        return (sigma_mm / self.spacing[0], sigma_mm / self.spacing[1], sigma_mm / self.spacing[2])


class Chest(NamedTuple):
    """Body outline, chest cavity, lungs and heart on broadcastable coordinates (mm)."""

    neck: np.ndarray  # 0 in the chest, 1 in the neck
    a: np.ndarray  # lateral semi-axis of the body outline
    b: np.ndarray  # antero-posterior semi-axis of the body outline
    dy: np.ndarray  # y from the centre of the outline
    a_c: np.ndarray  # lateral semi-axis of the chest cavity
    b_c: np.ndarray  # antero-posterior semi-axis of the chest cavity
    chest: np.ndarray  # the heights of the chest wall
    cavity_radius: np.ndarray  # normalised radius of the cavity outline (1 on it)
    cavity: np.ndarray
    lungs: np.ndarray
    heart: np.ndarray


def chest(anatomy: Anatomy, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> Chest:
    """The chest at (x, y, z): on the grid for the volume, at loose points for the trees that must stay in the lungs."""
    a0, b0, h = anatomy.half_width, anatomy.half_depth, anatomy.lung_height

    # Body outline: chest, wider shoulders near the apex, then a narrower neck above it.
    neck = _step(z, h + 30.0, 6.0)
    shoulders = _step(z, h - 50.0, 8.0) * (1.0 - _step(z, h + 20.0, 6.0))
    back = anatomy.body_y - b0
    a = (a0 + anatomy.shoulder_extra * shoulders) * (1 - neck) + 62.0 * neck
    b = b0 * (1 + 0.05 * shoulders) * (1 - neck) + 55.0 * neck
    dy = y - (anatomy.body_y * (1 - neck) + (back + 22.0 + 55.0) * neck)
    a_c, b_c = a - anatomy.fat - anatomy.muscle, b - anatomy.fat - anatomy.muscle
    chest = (z > -25.0) & (z < h + 8.0)
    cavity_radius = superellipse(x, dy, a_c, b_c)
    cavity = (cavity_radius <= 1.0) & chest

    # Lungs: two tapered ellipses above a domed diaphragm, the heart cut out of the left one.
    taper = np.sqrt(np.clip(1.0 - (np.maximum(z - 0.4 * h, 0.0) / (0.6 * h)) ** 2, 0.0, 1.0))  # rounded apex
    lungs = np.zeros(np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z)), bool)
    for side, width, dome in ((1.0, 0.47, 22.0), (-1.0, 0.43, 10.0)):  # right (+x) then left
        cx, lx, ly = side * 0.53 * a_c, width * a_c * taper, 0.9 * b_c * taper
        r2 = ((x - cx) / np.maximum(lx, 1e-3)) ** 2 + ((dy + 0.05 * b_c) / np.maximum(ly, 1e-3)) ** 2
        lungs |= (r2 <= 1.0) & (z > dome * (1.0 - r2)) & (z < h)
    heart = ((x + 0.18 * a_c) / (0.45 * a_c)) ** 2 + ((dy - 0.22 * b_c) / (0.5 * b_c)) ** 2 + (
        (z - 0.25 * h) / (0.22 * h + 15.0)
    ) ** 2 <= 1.0
    lungs &= cavity & ~heart
    return Chest(neck, a, b, dy, a_c, b_c, chest, cavity_radius, cavity, lungs, heart)
