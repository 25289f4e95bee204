"""Engine: distribution (init, gather), the training loop, checkpoints, tracking, metrics."""
