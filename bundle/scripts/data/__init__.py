"""Data at the bottom of the pipeline: datalists, the label table, NIfTI volumes and masks, previews, shape primitives."""

from scripts.data.datalist import cached_split
from scripts.data.grid import grid_shape, grid_spacing, network_grid
from scripts.data.labels import NUM_LABELS

__all__ = ["NUM_LABELS", "cached_split", "grid_shape", "grid_spacing", "network_grid"]
