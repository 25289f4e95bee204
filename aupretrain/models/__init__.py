"""Models: ResNet trunk, AUEncoder (AU + identity heads), pretraining model with projector."""
from .encoder import AUEncoder, PretrainModel, load_encoder, save_encoder

__all__ = ["AUEncoder", "PretrainModel", "load_encoder", "save_encoder"]
