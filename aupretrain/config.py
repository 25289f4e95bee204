"""Compose the one Hydra config tree (configs/) for every entry point."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf


def config_dir() -> Path:
    """The config tree: `aupretrain/configs/` (package data, so a plain `pip install` has it; the checkout's
    top-level `configs/` is a link to it); $AUPRETRAIN_CONFIG_DIR overrides."""
    env = os.environ.get("AUPRETRAIN_CONFIG_DIR")
    d = Path(env) if env else Path(__file__).resolve().parent / "configs"
    if not (d / "config.yaml").is_file():
        raise FileNotFoundError(f"config tree not found: {d}/config.yaml (set AUPRETRAIN_CONFIG_DIR)")
    return d


def load_config(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose configs/config.yaml with Hydra overrides (`key=value`, `group=option`, `experiment=smoke`)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    return cfg


def flatten(cfg: DictConfig | dict, prefix: str = "") -> dict[str, str]:
    """Flat {dotted.key: value} for MLflow params."""
    d = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)
    return out
