"""Neural network architectures whose published checkpoints the pipeline loads."""
