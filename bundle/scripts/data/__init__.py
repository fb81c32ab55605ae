"""Data at the bottom of the pipeline: datalists, the label table, NIfTI volumes and masks, previews, shape primitives."""
