"""Engine: distribution (init, gather), the training loop, checkpoints, metrics (the MLflow run is
`aupretrain.track`'s)."""
