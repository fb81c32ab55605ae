"""The app's infer tasks, one per file: `synthesize`, `synthesize_tumor` and `insert_tumor`."""
