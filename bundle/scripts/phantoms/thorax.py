"""Procedural thorax CT phantoms in HU with a label map, for tests and the CPU demo.

Each case draws its anatomy (body size, shoulders, fat, lungs, heart, spine, ribs, airways,
esophagus, a CT table at a varying height, one to three tumors inside a lung) from a seeded
random generator, so the same seed always gives the same volumes. Coordinates are millimetres
in the RAS frame of the written NIfTI; z = 0 is the bottom of the lungs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from tqdm import tqdm

from scripts.data.datalist import write_datalist
from scripts.data.labels import LABELS, PRECEDENCE
from scripts.data.shapes import irregular_blob, smooth_noise

logger = logging.getLogger(__name__)

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
    )


def _step(z: np.ndarray, centre: float, width: float) -> np.ndarray:
    """A smooth 0-to-1 step at `centre`."""
    return 1.0 / (1.0 + np.exp(-(z - centre) / width))


def _superellipse(dx: np.ndarray, dy: np.ndarray, a, b, power: float = 2.4) -> np.ndarray:
    """Normalised radius of the superellipse |dx/a|^p + |dy/b|^p (1 on the outline)."""
    return (np.abs(dx / a) ** power + np.abs(dy / b) ** power) ** (1.0 / power)


def _tube(points: tuple[np.ndarray, np.ndarray, np.ndarray], start, end, radius: float) -> np.ndarray:
    """Voxels within `radius` of the segment from `start` to `end`."""
    x, y, z = points
    p0, p1 = np.asarray(start, np.float32), np.asarray(end, np.float32)
    d = p1 - p0
    t = ((x - p0[0]) * d[0] + (y - p0[1]) * d[1] + (z - p0[2]) * d[2]) / float(d @ d)
    t = np.clip(t, 0.0, 1.0)
    return (x - p0[0] - t * d[0]) ** 2 + (y - p0[1] - t * d[1]) ** 2 + (z - p0[2] - t * d[2]) ** 2 <= radius**2


class _Grid:
    """Voxel grid of one phantom: shape, spacing and broadcastable RAS coordinates in mm."""

    def __init__(self, anatomy: Anatomy, size: int, rng: np.random.Generator):
        self.spacing_xy = anatomy.field_of_view / size
        self.spacing_z = max(3.0, self.spacing_xy * rng.uniform(0.8, 1.0))
        nz = max(8, int(round((anatomy.z_end - anatomy.z_start) / self.spacing_z)))
        self.shape = (size, size, nz)
        half = anatomy.field_of_view / 2.0
        self.origin = np.array([-half + self.spacing_xy / 2, -half + self.spacing_xy / 2, anatomy.z_start])
        self.x = (self.origin[0] + self.spacing_xy * np.arange(size, dtype=np.float32))[:, None, None]
        self.y = (self.origin[1] + self.spacing_xy * np.arange(size, dtype=np.float32))[None, :, None]
        self.z = (self.origin[2] + self.spacing_z * np.arange(nz, dtype=np.float32))[None, None, :]

    @property
    def points(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.x, self.y, self.z

    @property
    def affine(self) -> np.ndarray:
        affine = np.diag([self.spacing_xy, self.spacing_xy, self.spacing_z, 1.0])
        affine[:3, 3] = self.origin
        return affine

    def sigma_vox(self, sigma_mm: float) -> tuple[float, float, float]:
        return (sigma_mm / self.spacing_xy, sigma_mm / self.spacing_xy, sigma_mm / self.spacing_z)


def render_phantom(anatomy: Anatomy, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one phantom: (HU int16 volume, uint8 label map, 4x4 RAS affine)."""
    g = _Grid(anatomy, size, rng)
    x, y, z = g.points
    a0, b0, h = anatomy.half_width, anatomy.half_depth, anatomy.lung_height

    # Body outline: chest, wider shoulders near the apex, then a narrower neck above it.
    neck = _step(z, h + 30.0, 6.0)
    shoulders = _step(z, h - 50.0, 8.0) * (1.0 - _step(z, h + 20.0, 6.0))
    back = anatomy.body_y - b0
    a = (a0 + anatomy.shoulder_extra * shoulders) * (1 - neck) + 62.0 * neck
    b = b0 * (1 + 0.05 * shoulders) * (1 - neck) + 55.0 * neck
    cy = anatomy.body_y * (1 - neck) + (back + 22.0 + 55.0) * neck
    dy = y - cy
    body_radius = _superellipse(x, dy, a, b, np.where(dy < 0, 3.0, 2.3))
    body = body_radius <= 1.0
    muscle = _superellipse(x, dy, a - anatomy.fat, b - anatomy.fat, np.where(dy < 0, 3.0, 2.3)) <= 1.0
    a_c, b_c = a - anatomy.fat - anatomy.muscle, b - anatomy.fat - anatomy.muscle
    chest_a, chest_b = a0 - anatomy.fat - anatomy.muscle, b0 - anatomy.fat - anatomy.muscle  # below the shoulders
    chest = (z > -25.0) & (z < h + 8.0)
    cavity_radius = _superellipse(x, dy, a_c, b_c)
    cavity = (cavity_radius <= 1.0) & chest

    hu = np.full(g.shape, HU["air"], np.float32)
    hu[body] = HU["fat"]
    hu[muscle] = HU["muscle"]
    hu[muscle & (z < 0.0)] = HU["abdomen"]
    hu[cavity] = HU["mediastinum"]
    arms, arm_hu = _arms(anatomy, g)
    hu = np.where(arms, arm_hu, hu)

    # Lungs: two tapered ellipses above a domed diaphragm, the heart cut out of the left one.
    taper = np.sqrt(np.clip(1.0 - (np.maximum(z - 0.4 * h, 0.0) / (0.6 * h)) ** 2, 0.0, 1.0))  # rounded apex
    lungs = np.zeros(g.shape, bool)
    for side, width, dome in ((1.0, 0.47, 22.0), (-1.0, 0.43, 10.0)):  # right (+x) then left
        cx, lx, ly = side * 0.53 * a_c, width * a_c * taper, 0.9 * b_c * taper
        r2 = ((x - cx) / np.maximum(lx, 1e-3)) ** 2 + ((dy + 0.05 * b_c) / np.maximum(ly, 1e-3)) ** 2
        lungs |= (r2 <= 1.0) & (z > dome * (1.0 - r2)) & (z < h)
    heart = ((x + 0.18 * a_c) / (0.45 * a_c)) ** 2 + ((dy - 0.22 * b_c) / (0.5 * b_c)) ** 2 + (
        (z - 0.25 * h) / (0.22 * h + 15.0)
    ) ** 2 <= 1.0
    lungs &= cavity & ~heart

    parenchyma = HU["lung"] + 25.0 * smooth_noise(rng, g.shape, g.sigma_vox(6.0)) - 45.0 * (dy / b_c)
    n1, n2 = (smooth_noise(rng, g.shape, g.sigma_vox(5.0)) for _ in range(2))
    hilum_distance = np.sqrt((np.abs(x) - 0.35 * a_c) ** 2 + dy**2 + (z - 0.55 * h) ** 2)
    width = 0.12 + 0.2 * np.exp(-hilum_distance / 60.0)
    vessels = np.exp(-(n1**2 + n2**2) / (2.0 * width**2))
    hu = np.where(lungs, parenchyma * (1 - vessels) + HU["vessel"] * vessels, hu)

    # Airways: trachea from the neck to the carina, then the two main bronchi.
    carina = (0.0, anatomy.body_y + 0.1 * chest_b, 0.62 * h)
    top = (0.0, back + 22.0 + 55.0 + 0.35 * 55.0, anatomy.z_end + 20.0)
    airway = _tube(g.points, top, carina, 9.0)
    for side in (1.0, -1.0):
        airway |= _tube(g.points, carina, (side * 0.45 * chest_a, anatomy.body_y, 0.5 * h), 6.0)
    hu[airway & body] = HU["air"]
    hu[heart] = HU["heart"]

    # Oesophagus behind the trachea, then the spine, canal and cord along the whole volume.
    canal_y = back + anatomy.fat + 26.0 + 20.0 * neck
    esophagus = _tube(g.points, (-6.0, canal_y[0, 0, -1] + 46.0, top[2]), (-6.0, canal_y[0, 0, 0] + 46.0, -200.0), 7.0)
    esophagus &= body & ~airway
    hu[esophagus] = HU["esophagus"]
    canal_r = np.sqrt(x**2 + (y - canal_y) ** 2)
    body_r = np.sqrt(x**2 + (y - canal_y - 26.0) ** 2)
    disc = np.mod(z + 7.0, 28.0) < 5.0
    hu = np.where(body_r <= 18.0, np.where(disc, HU["disc"], HU["cancellous_bone"]), hu)
    hu[(body_r <= 18.0) & (body_r > 15.0) & ~disc] = HU["cortical_bone"]
    arch = (canal_r > 9.0) & (canal_r <= 14.0) & (y < canal_y + 4.0)
    spinous = (np.abs(x) < 5.0) & (y < canal_y) & (y > canal_y - 24.0)
    hu[(arch | spinous) & body] = HU["cortical_bone"]
    hu[canal_r <= 9.0] = HU["csf"]
    cord = canal_r <= 5.0
    hu[cord] = HU["cord"]

    # Ribs in the chest wall, sloping down towards the front, and the sternum between them.
    angle_front = np.clip(dy / b_c, -1.0, 1.0)
    ring = (cavity_radius > 1.0) & (cavity_radius <= 1.0 + 9.0 / np.minimum(a_c, b_c)) & chest
    spacing = (h + 15.0) / 11.0
    phase = (z + 30.0 * (1.0 + angle_front) / 2.0) / spacing
    rib = ring & (np.abs(phase - np.round(phase)) * spacing < 4.5) & ~((np.abs(x) < 25.0) & (dy > 0))
    sternum = ring & (np.abs(x) < 16.0) & (dy > 0) & (z > 0.2 * h) & (z < h - 10.0)
    hu[rib | sternum] = HU["cortical_bone"]

    # Tumors inside a lung, largest first (GTV-1).
    gtvs = _draw_tumors(anatomy, g, lungs, rng)
    for mask in gtvs:
        hu = np.where(mask, HU["tumor"] + 15.0 * smooth_noise(rng, g.shape, g.sigma_vox(3.0)), hu)
    lungs &= ~np.any(gtvs, axis=0)

    if anatomy.cushion:  # the body outline moved down by the gap: a pad that follows the back
        pad = _superellipse(x, dy + anatomy.table_gap, a, b, np.where(dy < 0, 3.0, 2.3)) <= 1.0
        pad &= ~body & ~arms & (dy < 0) & (np.abs(x) < 0.75 * a)
        hu[pad] = HU["cushion"]
    table = _table(anatomy, g, back)
    hu = np.where(table != 0, table, hu)

    hu = ndimage.gaussian_filter(hu, (0.5, 0.5, 0.5)) + rng.normal(0.0, anatomy.noise_hu, g.shape)
    structures = {
        "gtv_1": gtvs[0],
        "gtv_other": np.any(gtvs[1:], axis=0) if len(gtvs) > 1 else np.zeros(g.shape, bool),
        "lungs": lungs,
        "heart": heart & body,
        "esophagus": esophagus,
        "spinal_cord": cord,
        "body": body | arms,
    }
    label = np.zeros(g.shape, np.uint8)
    for name in reversed(PRECEDENCE):
        label[structures[name]] = LABELS[name]
    return np.clip(np.round(hu), -1024, 3071).astype(np.int16), label, g.affine


def _draw_tumors(anatomy: Anatomy, g: _Grid, lungs: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Irregular blobs, one per diameter, centred deep enough inside a lung and clipped to it."""
    depth = ndimage.distance_transform_edt(lungs, sampling=(g.spacing_xy, g.spacing_xy, g.spacing_z))
    placed = np.zeros(g.shape, bool)
    masks = []
    for diameter in anatomy.tumor_diameters:
        radius = diameter / 2.0
        free = depth * ~placed
        candidates = np.argwhere(free >= min(0.6 * radius, 0.8 * float(free.max())))
        centre = candidates[rng.integers(len(candidates))]
        c_mm = [g.x[centre[0], 0, 0], g.y[0, centre[1], 0], g.z[0, 0, centre[2]]]
        spacing = (g.spacing_xy, g.spacing_xy, g.spacing_z)
        blob = irregular_blob(g.points, spacing, c_mm, diameter, rng, irregularity=rng.uniform(0.12, 0.3))
        mask = blob & lungs & ~placed
        if not mask.any():  # a tumor smaller than a voxel still marks its centre
            mask[tuple(centre)] = True
        placed |= mask
        masks.append(mask)
    return masks


def _arms(anatomy: Anatomy, g: _Grid) -> tuple[np.ndarray, np.ndarray]:
    """Mask and HU of both arms (fat, muscle, humerus): along the chest, beside the head, or none."""
    x, y, z = g.points
    mask, hu = np.zeros(g.shape, bool), np.zeros(g.shape, np.float32)
    if anatomy.arms == "out":
        return mask, hu
    radius = 45.0
    if anatomy.arms == "beside":
        centre_x, centre_y, along = anatomy.half_width + 12.0 + radius, anatomy.body_y, z < anatomy.lung_height - 15.0
    else:
        centre_x, centre_y, along = 95.0, anatomy.body_y + 0.3 * anatomy.half_depth, z > anatomy.lung_height + 45.0
    for side in (1.0, -1.0):
        r = np.sqrt((x - side * centre_x) ** 2 + (y - centre_y) ** 2)
        arm = (r <= radius) & along
        tissue = np.where(r <= 11.0, HU["cortical_bone"], np.where(r <= radius - 8.0, HU["muscle"], HU["fat"]))
        mask |= arm
        hu = np.where(arm, tissue, hu)
    return mask, hu


def _table(anatomy: Anatomy, g: _Grid, back: float) -> np.ndarray:
    """HU of the flat radiotherapy table top under the back (0 where there is none): two shells around foam."""
    x, y, _ = g.points
    depth = back - anatomy.table_gap - y
    skin = max(4.0, 1.2 * g.spacing_xy)  # thick enough to be sampled on coarse grids
    inside = (np.abs(x) < 230.0) & (depth >= 0.0) & (depth < 30.0 + 2 * skin)
    shell = inside & ((depth < skin) | (depth >= 30.0 + skin))
    table = np.where(shell, HU["table_shell"], np.where(inside, HU["table_core"], 0.0)).astype(np.float32)
    return np.broadcast_to(table, g.shape)


def write_phantoms(
    out: str, n: int = 8, size: int = 128, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.05
) -> Path:
    """Write `n` phantom cases (`<out>/PHANTOM-XXX/ct.nii.gz`, `label.nii.gz`) and `<out>/datalist.json`.

    Args:
        out: output folder; existing case folders are kept, never overwritten.
        n: number of cases.
        size: in-plane voxels (the field of view is 400 to 480 mm; slices are at least 3 mm apart).
        seed: the same seed gives the same cases.
        val_fraction, test_fraction: shares of the seeded validation and test splits.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not 16 <= size <= 512:
        raise ValueError(f"size must be between 16 and 512 voxels, got {size}")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    cases = []
    for i, child in enumerate(tqdm(np.random.SeedSequence(seed).spawn(n), desc="phantoms", unit="case")):
        case = f"PHANTOM-{i + 1:03d}"
        cases.append(case)
        folder = root / case
        if (folder / "label.nii.gz").exists():
            logger.info("%s exists, kept", folder)
            continue
        rng = np.random.default_rng(child)
        ct, label, affine = render_phantom(draw_anatomy(rng), size, rng)
        folder.mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(ct, affine), folder / "ct.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), folder / "label.nii.gz")
    return write_datalist(root, cases, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)
