"""aupretrain: distributed pretraining of person-independent facial action-unit representations."""
__version__ = "0.1.0"


def load_encoder(path, map_location: str = "cpu"):
    """Load an exported AU encoder (`<run>/encoder.pt`)."""
    from .models.encoder import load_encoder as _load

    return _load(path, map_location)


__all__ = ["__version__", "load_encoder"]
