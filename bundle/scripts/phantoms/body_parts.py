"""The parts a phantom places around and into its chest: the arms, the CT table, and tumors inside a lung."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from scripts.data.shapes import irregular_blob
from scripts.phantoms.anatomy import HU, Anatomy, Grid


def draw_tumors(anatomy: Anatomy, g: Grid, lungs: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Irregular blobs, one per diameter, centred deep enough inside a lung and clipped to it."""
    depth = ndimage.distance_transform_edt(lungs, sampling=g.spacing)
    placed = np.zeros(g.shape, bool)
    masks = []
    for diameter in anatomy.tumor_diameters:
        radius = diameter / 2.0
        free = depth * ~placed
        candidates = np.argwhere(free >= min(0.6 * radius, 0.8 * float(free.max())))
        centre = candidates[rng.integers(len(candidates))]
        c_mm = [g.x[centre[0], 0, 0], g.y[0, centre[1], 0], g.z[0, 0, centre[2]]]
        blob = irregular_blob(g.points, g.spacing, c_mm, diameter, rng, irregularity=rng.uniform(0.12, 0.3))
        mask = blob & lungs & ~placed
        if not mask.any():  # a tumor smaller than a voxel still marks its centre
            mask[tuple(centre)] = True
        placed |= mask
        masks.append(mask)
    return masks


def draw_arms(anatomy: Anatomy, g: Grid) -> tuple[np.ndarray, np.ndarray]:
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


def draw_table(anatomy: Anatomy, g: Grid, back: float) -> np.ndarray:
    """HU of the flat radiotherapy table top under the back (0 where there is none): two shells around foam."""
    x, y, _ = g.points
    depth = back - anatomy.table_gap - y
    skin = max(4.0, 1.2 * g.spacing[1])  # thick enough to be sampled on coarse grids
    inside = (np.abs(x) < 230.0) & (depth >= 0.0) & (depth < 30.0 + 2 * skin)
    shell = inside & ((depth < skin) | (depth >= 30.0 + skin))
    table = np.where(shell, HU["table_shell"], np.where(inside, HU["table_core"], 0.0)).astype(np.float32)
    return np.broadcast_to(table, g.shape)
