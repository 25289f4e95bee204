"""aupretrain: distributed pretraining of person-independent facial action-unit representations."""
__version__ = "0.1.0"


def load_encoder(path, map_location: str = "cpu"):
    """An exported AU encoder as a module, in eval mode with frozen weights: face crops [N, 3, H, W] -> AU codes
    [N, D] (float32); pixels uint8 0..255 or float in [0, 1], a torch tensor or numpy array.

    `path`: an `aupretrain-export` folder (config.json + model.safetensors) or a run's `encoder.pt` (read with
    weights_only=True). Resizing and normalisation happen inside; `.encode(frames [N, H, W, 3])` takes decoded
    frames. Raises ValueError for a damaged or foreign file (naming it), and at call time for float pixels outside
    [0, 1] or a wrong layout. See `aupretrain.models.encoder.AUCodeModel`.
    """
    from .models.encoder import AUCodeModel, load_encoder as _load

    return AUCodeModel(_load(path, map_location)).eval()


__all__ = ["__version__", "load_encoder"]
