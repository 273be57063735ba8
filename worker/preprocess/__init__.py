"""How a model expects its input: the manifest's `preprocess` block, its defaults, the transform."""
