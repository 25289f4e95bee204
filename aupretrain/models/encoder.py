"""AUEncoder (trunk + AU head + identity head + preprocessing), its file formats and `AUCodeModel`.

The modules a pretraining method adds around it (projector, decoder, momentum branch, classifier) live with
the method in `aupretrain.methods`."""
from __future__ import annotations

import pickle
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .resnet import ResNetTrunk


class AUEncoder(nn.Module):
    """frames -> AU code `a` (what AU detection uses) and identity/appearance code `p`.

    `encode(frames_uint8)` takes RGB uint8 [N, H, W, 3] (any size) and applies the same resize and
    normalisation as training; `forward` takes normalised float [N, 3, S, S].
    """

    def __init__(self, model_cfg: dict[str, Any], input_size: int):
        super().__init__()
        c = dict(model_cfg)
        self.config = {**c, "input_size": int(input_size)}
        self.input_size = int(input_size)
        self.trunk = ResNetTrunk(tuple(c["widths"]), tuple(c["blocks"]), c["stem_width"], c["stem_stride"],
                                 c["stem_pool"], c["norm"], c["norm_groups"],
                                 bool(c.get("channels_last", False)))
        d = self.trunk.out_dim
        g = int(c.get("au_grid", 0))
        # AU code from a coarse spatial grid of the feature map: AUs are local (brows, lids, lip corners),
        # so where a feature fires matters; the identity code is global (average-pooled).
        self.au_head = nn.Sequential(nn.AdaptiveAvgPool2d(g), nn.Flatten(), nn.Linear(d * g * g, c["au_dim"])) if g else \
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(d, c["au_dim"]))
        self.id_head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(d, c["id_dim"]))
        self.register_buffer("mean", torch.tensor(c["mean"]).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(c["std"]).view(1, 3, 1, 1) * 255.0, persistent=False)

    @property
    def au_dim(self) -> int:
        """Size D of the AU code `a` (`model.au_dim`)."""
        return self.au_head[-1].out_features

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk(x)
        return {"a": self.au_head(h), "p": self.id_head(h)}

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """RGB uint8 [N, H, W, 3] -> normalised float [N, 3, S, S]."""
        x = frames.permute(0, 3, 1, 2).float()
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True,
                              align_corners=False)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def encode(self, frames: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """AU codes [N, au_dim] of RGB uint8 frames [N, H, W, 3]."""
        w = next(self.parameters())  # inputs follow the weights' device and dtype (bf16 under DeepSpeed's bf16)
        out = [self(self.preprocess(frames[i:i + batch_size].to(w.device)).to(w.dtype))["a"].float().cpu()
               for i in range(0, len(frames), batch_size)]
        return torch.cat(out) if out else torch.empty(0, self.au_dim)


def fp32_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors detached, on the CPU, contiguous, floating ones in fp32: what every saved weight file holds
    (DeepSpeed's bf16/fp16 modes keep the module in 16 bits; exported weights are fp32 whatever the precision)."""
    return {k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().contiguous()
            for k, v in tensors.items()}


def save_encoder(encoder: AUEncoder, path, extra: dict | None = None) -> None:
    """Write `encoder` to the file `path` with `torch.save` (the `encoder.pt` format that `load_encoder` reads):
    {"format": "aupretrain-encoder/1", "config": model config + input_size, "state_dict": `fp32_tensors` of its state dict,
    **extra} (a training run adds "step" and "mlflow_run_id"). Raises what torch.save raises (OSError)."""
    torch.save({"format": "aupretrain-encoder/1", "config": encoder.config,
                "state_dict": fp32_tensors(encoder.state_dict()), **(extra or {})}, path)


SAFETENSORS_FORMAT = "aupretrain-encoder/2"


def save_encoder_folder(encoder: AUEncoder, out, extra: dict | None = None) -> None:
    """Write `<out>/model.safetensors` (fp32 weights) and `<out>/config.json` (model config, input size,
    format, provenance) — the export format of `aupretrain-export`."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(fp32_tensors(encoder.state_dict()), str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps({"format": SAFETENSORS_FORMAT, "model": encoder.config,
                                                 **(extra or {})}, indent=1))


def load_encoder(path, map_location: str = "cpu") -> AUEncoder:
    """Load an encoder for feature extraction or fine-tuning: an export folder (`config.json` +
    `model.safetensors`, from `aupretrain-export`), its `model.safetensors`, or a training run's `encoder.pt`.

    `encoder.pt` is read with `torch.load(weights_only=True)`: tensors, numbers, strings, lists and dicts only,
    so a file carrying any other pickled object is refused instead of running it.

    Raises:
        FileNotFoundError: nothing loadable at `path`.
        ValueError: not an aupretrain encoder, a file that does not parse (damaged, truncated, not written by
            `torch.save` / safetensors), an `encoder.pt` holding objects other than plain data ("refused"), or
            weights that do not fit the saved model config — always naming the file.
    """
    import json
    from pathlib import Path

    p = Path(path)
    folder = p if p.is_dir() else p.parent if p.suffix == ".safetensors" else None
    if folder is not None:
        from safetensors.torch import load_file

        if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
            raise FileNotFoundError(f"{path}: an export folder needs config.json and model.safetensors")
        try:
            meta = json.loads((folder / "config.json").read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{folder / 'config.json'}: not readable JSON ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != SAFETENSORS_FORMAT or "model" not in meta:
            got = meta.get("format") if isinstance(meta, dict) else None
            raise ValueError(f"{folder / 'config.json'}: not an aupretrain encoder (format={got!r})")
        try:
            state = load_file(str(folder / "model.safetensors"), device=map_location)
        except Exception as e:  # noqa: BLE001 - safetensors' SafetensorError, OSError: a damaged or truncated file
            raise ValueError(f"{folder / 'model.safetensors'}: not a readable safetensors file, damaged or "
                             f"truncated ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
        cfg = dict(meta["model"])
    else:
        if not p.is_file():
            raise FileNotFoundError(f"{path}: no such encoder file or export folder")
        try:
            ck = torch.load(p, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as e:  # the weights-only unpickler: a global it does not admit, or garbage
            import re

            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]  # torch's advice first, the cause after
            named = re.search(r"GLOBAL ([\w.]+)", str(e))
            if named:
                raise ValueError(f"{path}: refused: loading it would call {named.group(1)} (an encoder file holds "
                                 "tensors and plain data only); do not load a file you cannot trust") from None
            cause = next((ln for ln in lines[1:] if not ln.startswith("Check the documentation")),
                         lines[-1] if lines else type(e).__name__)
            raise ValueError(f"{path}: not a readable encoder file, damaged or not written by torch.save "
                             f"({' '.join(cause.split())[:200]})") from None
        except Exception as e:  # noqa: BLE001 - a truncated zip (OSError, RuntimeError), a non-pickle (KeyError ...)
            raise ValueError(f"{path}: not a readable encoder file, damaged or not written by torch.save "
                             f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
        if not isinstance(ck, dict) or ck.get("format") != "aupretrain-encoder/1":
            got = ck.get("format") if isinstance(ck, dict) else None
            raise ValueError(f"{path}: not an aupretrain encoder file (format={got!r})")
        if not isinstance(ck.get("config"), dict) or not isinstance(ck.get("state_dict"), dict):
            raise ValueError(f"{path}: an aupretrain encoder file without its config or state_dict (damaged)")
        cfg, state = dict(ck["config"]), ck["state_dict"]
    try:
        enc = AUEncoder(cfg, cfg.pop("input_size"))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: the saved model config does not build an encoder "
                         f"({type(e).__name__}: {e})") from None
    try:
        enc.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path}: the weights do not fit the encoder its config describes "
                         f"({' '.join(str(e).split())[:300]})") from None
    return enc.eval()


class AUCodeModel(nn.Module):
    """What `aupretrain.load_encoder` returns: aligned face crops in, AU codes out.

    forward(x): x is uint8 [N, 3, H, W] (0..255) or float [N, 3, H, W] in [0, 1], RGB, any H, W (aligned crops
    as `aupretrain-pack` cuts them); resized (bilinear, antialiased) to the training input size and normalised
    inside. Returns the AU code [N, D] (float32). `encoder` is the underlying AUEncoder.
    """

    def __init__(self, encoder: AUEncoder):
        super().__init__()
        self.encoder = encoder

    @property
    def au_dim(self) -> int:
        """Size D of the AU code (the encoder's `au_dim`)."""
        return self.encoder.au_dim

    @property
    def config(self) -> dict:
        """The encoder's model config (with `input_size`), as saved with it."""
        return self.encoder.config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected face crops [N, 3, H, W], got {tuple(x.shape)}")
        x = x.float() if x.dtype == torch.uint8 else x.float() * 255.0
        s = self.encoder.input_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        return self.encoder((x - self.encoder.mean) / self.encoder.std)["a"]

    @torch.no_grad()
    def encode(self, frames: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """AU codes [N, D] of RGB uint8 frames [N, H, W, 3] (channels last, as decoded video frames)."""
        return self.encoder.encode(frames, batch_size)
