"""aupretrain: distributed pretraining of person-independent facial action-unit representations."""
__version__ = "0.1.0"


def load_encoder(path, map_location: str = "cpu"):
    """An exported AU encoder as a module: face crops uint8 [N, 3, H, W] (or float in [0, 1]) -> AU codes [N, D].

    `path`: an `aupretrain-export` folder (config.json + model.safetensors) or a run's `encoder.pt` (read with
    weights_only=True). Resizing and normalisation happen inside; `.encode(frames [N, H, W, 3] uint8)` also
    works. See `aupretrain.models.encoder.AUCodeModel`.
    """
    from .models.encoder import AUCodeModel, load_encoder as _load

    return AUCodeModel(_load(path, map_location)).eval()


__all__ = ["__version__", "load_encoder"]
