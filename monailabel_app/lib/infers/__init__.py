"""The app's infer tasks, one per file: `synthesize` and `synthesize_tumor`."""
