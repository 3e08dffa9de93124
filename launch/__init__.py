"""The arbor CLI, the training controller, checkpoints and tracking."""
