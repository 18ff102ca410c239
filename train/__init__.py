"""Training YOLOR: datasets, augmentation, the training objective and loop, evaluation (needs torch)."""
