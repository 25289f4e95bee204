"""Methods: the `nn.Module` each objective trains — the AU encoder, the projector and the method's own extra
modules (CLP's decoder, MoCo's momentum branch and queue, the supervised bound's classifier), so `models/`
holds the encoder alone and `objectives/` only pure loss functions.

`build_method(cfg)` returns the method of `cfg.objective.name` (tcl, clp, simclr, moco, supervised).
"""
from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from .base import Method
from .clp import CIRRequest, CLPMethod, cir_forward, select_frames
from .decoders import Decoder
from .moco import MoCoMethod, MomentumBranch
from .supervised import SupervisedMethod

METHODS: dict[str, type[Method]] = {"tcl": Method, "simclr": Method, "clp": CLPMethod, "moco": MoCoMethod,
                                    "supervised": SupervisedMethod}


def method_class(name: str) -> type[Method]:
    """The method class of objective `name`. Raises ValueError for an unknown name."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown objective {name!r}; available: {sorted(METHODS)}") from None


def build_method(objective_cfg: Any, model_cfg: Any, input_size: int) -> Method:
    """The method of `objective_cfg.name` built from the `objective` and `model` configs (DictConfig or dict)."""
    oc, mc = _plain(objective_cfg), _plain(model_cfg)
    return method_class(oc["name"])(mc, int(input_size), oc)


def _plain(cfg: Any) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)


__all__ = ["CIRRequest", "CLPMethod", "Decoder", "METHODS", "Method", "MoCoMethod", "MomentumBranch",
           "SupervisedMethod", "build_method", "cir_forward", "method_class", "select_frames"]
