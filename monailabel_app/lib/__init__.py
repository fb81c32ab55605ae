"""The MONAI Label app's building blocks: one module per concept, one file per infer task (lib/infers)."""
