"""Models: the ResNet trunk and the AUEncoder (AU + identity codes); its save/load formats."""
from .encoder import AUCodeModel, AUEncoder, load_encoder, save_encoder

__all__ = ["AUCodeModel", "AUEncoder", "load_encoder", "save_encoder"]
