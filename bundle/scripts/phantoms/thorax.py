"""Procedural thorax CT phantoms in HU with a label map, for tests and the CPU demo.

Each case draws its anatomy (body size, shoulders, fat, lungs, heart, spine, ribs, airways,
esophagus, a CT table at a varying height, one to three tumors inside a lung) from a seeded
random generator, so the same seed always gives the same volumes. Coordinates are millimetres
in the RAS frame of the written NIfTI; z = 0 is the bottom of the lungs. The fine detail (vessel
trees down to 1 mm, fissures, bronchial walls, rib cortex around marrow, fat and muscle texture)
is set in millimetres and drawn with partial volume, so a coarse size renders the same case coarser.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from tqdm import tqdm

from scripts.data.datalist import write_datalist
from scripts.data.labels import LABELS, PRECEDENCE
from scripts.data.shapes import smooth_noise
from scripts.phantoms.anatomy import HU, Anatomy, Grid, check_size, chest, draw_anatomy, superellipse
from scripts.phantoms.body_parts import draw_arms, draw_table, draw_tumors
from scripts.phantoms.fine_detail import airway_trunk, lung_hu, tissue_texture, tubes, with_wall

__all__ = ["HU", "Anatomy", "check_size", "draw_anatomy", "render_phantom", "write_phantoms"]

logger = logging.getLogger(__name__)


def _tube(
    points: tuple[np.ndarray, np.ndarray, np.ndarray],
    start: Sequence[float] | np.ndarray,
    end: Sequence[float] | np.ndarray,
    radius: float,
) -> np.ndarray:
    """Voxels within `radius` of the segment from `start` to `end`."""
    x, y, z = points
    p0, p1 = np.asarray(start, np.float32), np.asarray(end, np.float32)
    d = p1 - p0
    t = ((x - p0[0]) * d[0] + (y - p0[1]) * d[1] + (z - p0[2]) * d[2]) / float(d @ d)
    t = np.clip(t, 0.0, 1.0)
    return (x - p0[0] - t * d[0]) ** 2 + (y - p0[1] - t * d[1]) ** 2 + (z - p0[2] - t * d[2]) ** 2 <= radius**2


def _deeper_than(depth: np.ndarray, thickness: float, blur: float | np.ndarray) -> np.ndarray:
    """Share of a voxel `blur` mm across a surface, `depth` mm below it, that lies deeper than `thickness` (marrow)."""
    low, high = np.maximum(depth - blur / 2.0, 0.0), depth + blur / 2.0
    return np.clip((high - np.maximum(low, thickness)) / (high - low), 0.0, 1.0)


def render_phantom(
    anatomy: Anatomy, size: int | Sequence[int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one phantom: (HU int16 volume, uint8 label map, 4x4 RAS affine); `size` as `check_size` takes it.

    `rng` draws what depends on the grid (noise fields, tumor places); the fine detail comes from the anatomy's
    `detail_seed`, so it is the same at every size.
    """
    g = Grid(anatomy, size, rng)
    detail = np.random.default_rng(anatomy.detail_seed)
    x, y, z = g.points
    h, back = anatomy.lung_height, anatomy.body_y - anatomy.half_depth
    c = chest(anatomy, x, y, z)
    power = np.where(c.dy < 0, 3.0, 2.3)
    body = superellipse(x, c.dy, c.a, c.b, power) <= 1.0
    muscle = superellipse(x, c.dy, c.a - anatomy.fat, c.b - anatomy.fat, power) <= 1.0

    hu = np.full(g.shape, HU["air"], np.float32)
    hu[body] = HU["fat"]
    hu[muscle] = HU["muscle"]
    hu[muscle & (z < 0.0)] = HU["abdomen"]
    hu[c.cavity] = HU["mediastinum"]
    arms, arm_hu = draw_arms(anatomy, g)
    hu = np.where(arms, arm_hu, hu)
    texture = np.zeros(g.shape, np.float32)  # fibrous septa in the fat, fibres in the muscle
    texture[hu == HU["fat"]] = 20.0
    texture[(hu == HU["muscle"]) | (hu == HU["abdomen"])] = 10.0
    hu += texture * tissue_texture(g, detail)
    trunk = airway_trunk(anatomy)
    hu = np.where(c.lungs, lung_hu(anatomy, g, c, trunk, rng, detail), hu)

    # Airways with their walls: trachea from the neck to the carina, then the two main bronchi.
    airway = np.zeros(g.shape, bool)
    for segment in trunk:
        airway |= _tube(g.points, segment[:3], segment[3:6], segment[6])
    hu = np.where(body, hu + (HU["bronchial_wall"] - hu) * tubes(g, with_wall(trunk)), hu)
    hu[airway & body] = HU["air"]
    hu[c.heart] = HU["heart"]

    # Oesophagus behind the trachea, then the spine, canal and cord along the whole volume.
    canal_y = back + anatomy.fat + 26.0 + 20.0 * c.neck
    esophagus = _tube(
        g.points, (-6.0, canal_y[0, 0, -1] + 46.0, trunk[0, 2]), (-6.0, canal_y[0, 0, 0] + 46.0, -200.0), 7.0
    )
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

    # Ribs in the chest wall, sloping down towards the front, and the sternum between them: cortex around marrow.
    angle_front = np.clip(c.dy / c.b_c, -1.0, 1.0)
    ring = (c.cavity_radius > 1.0) & (c.cavity_radius <= 1.0 + 9.0 / np.minimum(c.a_c, c.b_c)) & c.chest
    spacing = (h + 15.0) / 11.0
    phase = (z + 30.0 * (1.0 + angle_front) / 2.0) / spacing
    rib = ring & (np.abs(phase - np.round(phase)) * spacing < 4.5) & ~((np.abs(x) < 25.0) & (c.dy > 0))
    sternum = ring & (np.abs(x) < 16.0) & (c.dy > 0) & (z > 0.2 * h) & (z < h - 10.0)
    bone = rib | sternum
    radial = ((c.cavity_radius - 1.0) * np.minimum(c.a_c, c.b_c))[bone]  # mm into the 9 mm of bone
    across = np.where(rib, 4.5 - np.abs(phase - np.round(phase)) * spacing, 16.0 - np.abs(x))[bone]  # from its edge
    blur = np.where(rib, g.spacing[2], g.spacing[0])[bone]
    marrow = _deeper_than(radial, 1.5, g.spacing[0]) * _deeper_than(9.0 - radial, 1.5, g.spacing[0])
    marrow *= _deeper_than(across, 1.5, blur)
    hu[bone] = HU["cortical_bone"] + (HU["cancellous_bone"] - HU["cortical_bone"]) * marrow

    # Tumors inside a lung, largest first (GTV-1).
    gtvs = draw_tumors(anatomy, g, c.lungs, rng)
    for mask in gtvs:
        hu = np.where(mask, HU["tumor"] + 15.0 * smooth_noise(rng, g.shape, g.sigma_vox(3.0)), hu)
    lungs = c.lungs & ~np.any(gtvs, axis=0)

    if anatomy.cushion:  # the body outline moved down by the gap: a pad that follows the back
        pad = superellipse(x, c.dy + anatomy.table_gap, c.a, c.b, power) <= 1.0
        pad &= ~body & ~arms & (c.dy < 0) & (np.abs(x) < 0.75 * c.a)
        hu[pad] = HU["cushion"]
    table = draw_table(anatomy, g, back)
    hu = np.where(table != 0, table, hu)

    hu = ndimage.gaussian_filter(hu, (0.5, 0.5, 0.5)) + rng.normal(0.0, anatomy.noise_hu, g.shape)
    structures = {
        "gtv_1": gtvs[0],
        "gtv_other": np.any(gtvs[1:], axis=0) if len(gtvs) > 1 else np.zeros(g.shape, bool),
        "lungs": lungs,
        "heart": c.heart & body,
        "esophagus": esophagus,
        "spinal_cord": cord,
        "body": body | arms,
    }
    label = np.zeros(g.shape, np.uint8)
    for name in reversed(PRECEDENCE):
        label[structures[name]] = LABELS[name]
    return np.clip(np.round(hu), -1024, 3071).astype(np.int16), label, g.affine


def write_phantoms(
    out: str,
    n: int = 8,
    size: int | Sequence[int] = 128,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.05,
) -> Path:
    """Write `n` phantom cases (`<out>/PHANTOM-XXX/ct.nii.gz`, `label.nii.gz`) and `<out>/datalist.json`.

    Args:
        out: output folder; existing case folders are kept, never overwritten.
        n: number of cases.
        size: in-plane voxels over the 400 to 480 mm field of view, slices at least 3 mm apart; or [nx, ny, nz]:
            nx by ny voxels over the field of view and nz slices over the scanned length (the detail is worth 1 mm).
        seed: the same seed gives the same cases.
        val_fraction, test_fraction: shares of the seeded validation and test splits.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    size = check_size(size)
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
