"""A phantom's detail set in mm and drawn with partial volume: airways, vessel and bronchial trees, fissures, texture."""

from __future__ import annotations

import numpy as np

from scripts.data.shapes import smooth_noise
from scripts.phantoms.anatomy import HU, Anatomy, Chest, Grid, chest


def _partial_volume(
    distance: np.ndarray, thickness: float | np.ndarray, blur: float | np.ndarray, dims: int
) -> np.ndarray:
    """Share of a voxel `blur` mm across in a sheet (dims 1) or tube (dims 2) `thickness` across, `distance` mm off it.

    What is thinner than a voxel fades instead of vanishing between voxel centres.
    """
    reach = np.maximum(thickness, blur) / 2.0
    return np.minimum(1.0, thickness / blur) ** dims * np.clip((reach - np.abs(distance)) / blur + 0.5, 0.0, 1.0)


def airway_trunk(anatomy: Anatomy) -> np.ndarray:
    """Trachea from the neck to the carina, then the right and left main bronchi: rows of start, end (mm) and radius."""
    chest_a, chest_b = anatomy.chest_axes
    h, back = anatomy.lung_height, anatomy.body_y - anatomy.half_depth
    carina = (0.0, anatomy.body_y + 0.1 * chest_b, 0.62 * h)
    top = (0.0, back + 22.0 + 55.0 + 0.35 * 55.0, anatomy.z_end + 20.0)
    bronchi = [[*carina, side * 0.45 * chest_a, anatomy.body_y, 0.5 * h, 6.0] for side in (1.0, -1.0)]
    return np.array([[*top, *carina, 9.0], *bronchi])


def with_wall(airways: np.ndarray) -> np.ndarray:
    """Airway segments widened by their wall: 0.5 mm plus a fifth of the lumen radius."""
    return np.column_stack([airways[:, :6], 1.2 * airways[:, 6] + 0.5])


def _lung_points(anatomy: Anatomy, side: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` points (mm) drawn uniformly inside the right (`side` 1) or left (-1) lung: the ends of a tree's branches."""
    low = [0.0, anatomy.body_y - anatomy.half_depth, 0.0]
    high = [anatomy.half_width, anatomy.body_y + anatomy.half_depth, anatomy.lung_height]
    found = np.empty((0, 3))
    while len(found) < n:
        points = rng.uniform(low, high, (4 * n, 3)) * [side, 1.0, 1.0]
        found = np.concatenate([found, points[chest(anatomy, *points.T).lungs]])
    return found[:n]


def _space_filling_tree(root: np.ndarray, ends: np.ndarray, leaf_radius: float, rng: np.random.Generator) -> np.ndarray:
    """Segments (start, end in mm, radius) of a tree from `root` that forks until each branch reaches one of `ends`.

    A branch runs part of the way to the centre of the ends it supplies, then forks in two across the longest side of
    their bounding box; radii follow Murray's law (the cubes add up), so the branches thin out towards the periphery.
    The tree grows a generation at a time; the ends of each branch lie together in `points`, `count` of them.
    """
    points, count, starts, segments = ends, np.array([len(ends)]), root[None], []
    while len(count):
        first = np.concatenate([[0], np.cumsum(count)[:-1]])
        centre = np.add.reduceat(points, first) / count[:, None]
        fork = count > 1
        tips = np.where(fork[:, None], starts + rng.uniform(0.3, 0.5, (len(count), 1)) * (centre - starts), centre)
        segments.append(np.column_stack([starts, tips, leaf_radius * np.cbrt(count)]))
        branch = np.repeat(np.arange(len(count)), count)
        longest = np.argmax(np.maximum.reduceat(points, first) - np.minimum.reduceat(points, first), axis=1)
        points = points[np.lexsort((points[np.arange(len(points)), longest[branch]], branch))]
        points = points[fork[branch]]
        cut = np.clip(np.round(count[fork] * rng.uniform(0.35, 0.65, fork.sum())), 1, count[fork] - 1).astype(int)
        count, starts = np.column_stack([cut, count[fork] - cut]).ravel(), np.repeat(tips[fork], 2, axis=0)
    return np.concatenate(segments)


def _lung_trees(anatomy: Anatomy, trunk: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Segments of the bronchial and pulmonary vessel trees of both lungs; of the vessels, branches 1 to 3 mm across.

    The vessel trees start at the hila; the noise field of `lung_hu` draws the wider vessels.
    """
    chest_a = anatomy.chest_axes[0]
    vessels, bronchi = [], []
    for side, bronchus_end in zip((1.0, -1.0), trunk[1:, 3:6]):
        hilum = np.array([side * 0.35 * chest_a, anatomy.body_y, 0.55 * anatomy.lung_height])
        tree = _space_filling_tree(hilum, _lung_points(anatomy, side, 1500, rng), 0.5, rng)
        vessels.append(tree[tree[:, 6] <= 1.5])
        bronchi.append(_space_filling_tree(bronchus_end, _lung_points(anatomy, side, 64, rng), 0.7, rng))
    return np.concatenate(vessels), np.concatenate(bronchi)


def _batches(boxes: np.ndarray, budget: int) -> list[np.ndarray]:
    """Indices of `boxes` (voxel extents), smallest first, in runs whose count times largest extents fit `budget`."""
    order, runs, first = np.argsort(boxes.prod(axis=1)), [], 0
    extent = boxes[order[0]]
    for last in range(1, len(order)):
        extent = np.maximum(extent, boxes[order[last]])
        if (last + 1 - first) * extent.prod() > budget:
            runs.append(order[first:last])
            first, extent = last, boxes[order[last]]
    return [*runs, order[first:]]


def tubes(g: Grid, segments: np.ndarray, budget: int = 2**21) -> np.ndarray:
    """Share of each voxel inside tubes (rows of start, end in mm, radius), drawn in bounding boxes, many at a time."""
    share = np.zeros(g.shape, np.float32)
    spacing, shape = np.asarray(g.spacing), np.asarray(g.shape)
    starts, ends, radii = segments[:, :3], segments[:, 3:6], segments[:, 6:]
    low = np.clip(np.floor((np.minimum(starts, ends) - radii - spacing.max() - g.origin) / spacing), 0, shape)
    high = np.clip(np.ceil((np.maximum(starts, ends) + radii + spacing.max() - g.origin) / spacing) + 1, 0, shape)
    low, boxes = low.astype(int), (high - low).astype(int)
    drawn = np.flatnonzero(boxes.min(axis=1) > 0)
    if not len(drawn):
        return share
    axes = (g.x.ravel(), g.y.ravel(), g.z.ravel())
    for run in _batches(boxes[drawn], budget):
        b = drawn[run]
        index = [np.minimum(low[b, a, None] + np.arange(boxes[b, a].max()), shape[a] - 1) for a in range(3)]
        index = [i.reshape([-1] + [i.shape[1] if a == axis else 1 for a in range(3)]) for axis, i in enumerate(index)]
        column = [v.astype(np.float32).reshape(-1, 1, 1, 1) for v in (*starts[b].T, *(ends[b] - starts[b]).T)]
        local = [axis[i] - p for axis, i, p in zip(axes, index, column[:3])]
        d = column[3:]
        t = np.clip(sum(p * d_i for p, d_i in zip(local, d)) / np.maximum(sum(d_i**2 for d_i in d), 1e-9), 0.0, 1.0)
        offset = [p - t * d_i for p, d_i in zip(local, d)]
        distance2 = sum(o**2 for o in offset)
        # The voxel's extent along the offset from the axis (the mean spacing on the axis itself).
        across = sum((o * s) ** 2 for o, s in zip(offset, spacing.astype(np.float32)))
        blur = np.sqrt((across + np.float32(1e-4 * spacing.mean() ** 2)) / (distance2 + np.float32(1e-4)))
        diameter = (2.0 * radii[b]).astype(np.float32).reshape(-1, 1, 1, 1)
        flat = (index[0] * shape[1] + index[1]) * shape[2] + index[2]
        np.maximum.at(share.reshape(-1), flat.ravel(), _partial_volume(np.sqrt(distance2), diameter, blur, 2).ravel())
    return share


def _fissures(anatomy: Anatomy, g: Grid, rng: np.random.Generator) -> np.ndarray:
    """Share of each voxel in a 1 mm fissure: the oblique one of each lung and the horizontal one of the right lung.

    The oblique fissure runs, gently bowed, from high at the back down to the front of the diaphragm; the horizontal one
    lies in front of it.
    """
    x, y, z = g.points
    h, (chest_a, chest_b) = anatomy.lung_height, anatomy.chest_axes
    spacing = np.asarray(g.spacing)
    fissures = np.zeros(g.shape, np.float32)
    for side in (1.0, -1.0):
        back_z, front_z, bow = rng.uniform(0.62, 0.75) * h, rng.uniform(0.0, 0.12) * h, rng.uniform(-8.0, 8.0)
        normal = np.array([0.0, back_z - front_z, 1.6 * chest_b]) / np.hypot(back_z - front_z, 1.6 * chest_b)
        across = (side * x - 0.53 * chest_a) / (0.47 * chest_a)  # -1 to 1 from the medial to the lateral side
        oblique = normal[1] * (y - anatomy.body_y + 0.8 * chest_b) + normal[2] * (z - back_z) + bow * across**2
        sheets = [_partial_volume(oblique, 1.0, float(np.linalg.norm(normal * spacing)), 1)]
        if side > 0:
            tilt = rng.uniform(-0.15, 0.15)
            horizontal = (z - rng.uniform(0.52, 0.62) * h - tilt * (y - anatomy.body_y)) / np.hypot(1.0, tilt)
            blur = float(np.hypot(tilt * spacing[1], spacing[2]) / np.hypot(1.0, tilt))
            sheets.append(_partial_volume(horizontal, 1.0, blur, 1) * (oblique > 0))
        for sheet in sheets:
            np.maximum(fissures, sheet * (side * x > 0), out=fissures)
    return fissures


def tissue_texture(g: Grid, rng: np.random.Generator, n_waves: int = 64) -> np.ndarray:
    """Unit-variance texture of plane waves 2 to 8 mm across, stretched along the body as fibres and septa run.

    Set in mm, so it is the same at every size; each wave is blurred by the voxel (a Gaussian half a spacing wide), so a
    coarse grid gets the texture's average, not aliasing.
    """
    wavelength = np.exp(rng.uniform(np.log(2.0), np.log(8.0), n_waves))
    k = rng.standard_normal((n_waves, 3)) * [1.0, 1.0, 0.3]
    k *= (2.0 * np.pi / wavelength / np.linalg.norm(k, axis=1))[:, None]
    phase = rng.uniform(0.0, 2.0 * np.pi, n_waves)
    gain = np.sqrt(2.0 / n_waves) * np.exp(-0.5 * ((k * np.asarray(g.spacing) / 2.0) ** 2).sum(axis=1))
    in_plane = (g.x * k[:, 0] + g.y * k[:, 1] + phase).astype(np.float32)  # (nx, ny, wave)
    along = g.z.reshape(-1, 1) * k[:, 2]  # (nz, wave): cos(a + b) = cos a cos b - sin a sin b, one product per term
    cos_z, sin_z = ((gain * f(along)).T.astype(np.float32) for f in (np.cos, np.sin))
    return np.cos(in_plane) @ cos_z - np.sin(in_plane) @ sin_z


def lung_hu(
    anatomy: Anatomy, g: Grid, c: Chest, trunk: np.ndarray, rng: np.random.Generator, detail: np.random.Generator
) -> np.ndarray:
    """HU of the lungs: parenchyma, wide vessels of a noise field, vessel trees down to 1 mm, fissures, bronchi."""
    x, _, z = g.points
    parenchyma = HU["lung"] + 25.0 * smooth_noise(rng, g.shape, g.sigma_vox(6.0)) - 45.0 * (c.dy / c.b_c)
    n1, n2 = (smooth_noise(rng, g.shape, g.sigma_vox(5.0)) for _ in range(2))
    hilum_distance = np.sqrt((np.abs(x) - 0.35 * c.a_c) ** 2 + c.dy**2 + (z - 0.55 * anatomy.lung_height) ** 2)
    width = 0.12 + 0.2 * np.exp(-hilum_distance / 60.0)
    vessel_trees, bronchi = _lung_trees(anatomy, trunk, detail)
    vessels = np.maximum(np.exp(-(n1**2 + n2**2) / (2.0 * width**2)), tubes(g, vessel_trees))
    hu = parenchyma * (1 - vessels) + HU["vessel"] * vessels
    hu += (HU["fissure"] - hu) * _fissures(anatomy, g, detail)
    hu += (HU["bronchial_wall"] - hu) * tubes(g, with_wall(bronchi))
    return hu + (HU["air"] - HU["bronchial_wall"]) * tubes(g, bronchi)
