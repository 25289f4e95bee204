"""Procedural synthetic face-video corpus with ground-truth AU, pose and landmark labels."""
from .identity import AUS, Identity, Pose, Scene, sample_identity, sample_scene
from .render import render

__all__ = ["AUS", "Identity", "Pose", "Scene", "render", "sample_identity", "sample_scene"]
