"""AUEncoder (trunk + AU head + identity head + preprocessing), its file formats and `AUCodeModel`.

The modules a pretraining method adds around it (projector, decoder, momentum branch, classifier) live with
the method in `aupretrain.methods`."""
from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .resnet import ResNetTrunk


FLOAT_TOLERANCE = 1e-3  # float pixels a little outside [0, 1] (rounding after a resize) are accepted


def _shape_hint(shape: tuple, layout: str) -> str:
    """A hint for a common layout mistake (channels on the wrong side, one image, grey, RGBA), or ""."""
    nd, last = len(shape), (shape[-1] if shape else None)
    if layout == "NHWC":
        if nd == 4 and shape[1] == 3 and last != 3:
            return ("; that looks like channels-first crops [N, 3, H, W]: use x.permute(0, 2, 3, 1) "
                    "(aupretrain.load_encoder's model also takes crops directly: enc(crops))")
        if nd == 3 and last == 3:
            return "; that looks like one frame [H, W, 3]: pass frame[None]"
        if nd == 3:
            return "; if these are grey frames [N, H, W], repeat them to RGB: x[..., None].expand(-1, -1, -1, 3)"
        if nd == 4 and last == 1:
            return "; grey frames: repeat them to RGB with x.expand(-1, -1, -1, 3)"
        if nd == 4 and last == 4:
            return "; RGBA frames: drop alpha with x[..., :3]"
    else:
        if nd == 4 and last == 3 and shape[1] != 3:
            return ("; that looks like channels-last frames [N, H, W, 3]: use enc.encode(frames) "
                    "or x.permute(0, 3, 1, 2)")
        if nd == 3 and shape[0] == 3:
            return "; that looks like one crop [3, H, W]: pass crop[None]"
        if nd == 4 and shape[1] == 1:
            return "; grey crops: repeat them to RGB with x.expand(-1, 3, -1, -1)"
        if nd == 4 and shape[1] == 4:
            return "; RGBA crops: drop alpha with x[:, :3]"
    return ""


def as_pixels(x, layout: str = "NHWC") -> torch.Tensor:
    """`x` (a torch tensor, a numpy array, or anything `torch.as_tensor` takes) as a tensor of the same values and
    dtype (numpy arrays shared where possible), checked to be RGB images in `layout`: "NHWC" (decoded frames
    [N, H, W, 3]) or "NCHW" (face crops [N, 3, H, W]), H, W >= 1, N >= 0, with pixel values in the one convention
    of `AUEncoder.encode` and `AUCodeModel.forward`: uint8 (or another integer type) 0..255, or floating in [0, 1]
    (within FLOAT_TOLERANCE; NaN and inf are refused).

    Raises:
        TypeError: `x` is not array-like (a tensor, numpy array or nested list of numbers).
        ValueError: the wrong shape (naming the expected layout, the shape given, and the likely fix), a bool or
            complex dtype, integers outside 0..255, or floats outside [0, 1] (naming the dtype, min and max:
            divide by 255 or pass uint8).
    """
    what = "frames [N, H, W, 3] (channels last)" if layout == "NHWC" else "face crops [N, 3, H, W] (channels first)"
    if not isinstance(x, torch.Tensor):
        if isinstance(x, np.ndarray) and (not x.flags.writeable or any(s < 0 for s in x.strides)):
            x = np.array(x)  # torch refuses negative strides (frame[..., ::-1]) and warns on read-only arrays
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"expected RGB {what} as a torch tensor or numpy array, got {type(x).__name__} "
                            f"({' '.join(str(e).split())[:150]})") from None
    shape = tuple(x.shape)
    c, hw = ((shape[3], shape[1:3]) if layout == "NHWC" else (shape[1], shape[2:])) if len(shape) == 4 else (0, ())
    if c != 3 or min(hw) < 1:
        raise ValueError(f"expected RGB {what}, uint8 0..255 or float in [0, 1]; got shape {shape}"
                         + (_shape_hint(shape, layout) or ("; H and W must be at least 1" if c == 3 else "")))
    if x.dtype == torch.uint8 or x.numel() == 0:
        return x
    if x.dtype == torch.bool or x.is_complex():
        raise ValueError(f"{what}: expected uint8 0..255 or float in [0, 1], got {x.dtype}")
    if not x.is_floating_point():  # int64 from a list of ints, int32, uint16 ...: the 0..255 scale, checked
        lo, hi = (int(v) for v in torch.aminmax(x.detach().to(torch.int64)))
        if lo < 0 or hi > 255:
            raise ValueError(f"{what}: integer pixels must be 0..255 (uint8); got {x.dtype} with min {lo}, max {hi}")
        return x
    lo, hi = (float(v) for v in torch.aminmax(x.detach().float()))
    if not (lo >= -FLOAT_TOLERANCE and hi <= 1.0 + FLOAT_TOLERANCE):  # also refuses NaN (every comparison fails)
        fix = ("remove the non-finite values" if not (np.isfinite(lo) and np.isfinite(hi)) else
               "if these are 0..255 values, divide by 255 (x / 255) or pass uint8 (x.to(torch.uint8))")
        raise ValueError(f"{what}: float pixels must be in [0, 1] (uint8 is the 0..255 type); got {x.dtype} "
                         f"with min {lo:.4g}, max {hi:.4g}: {fix}")
    return x


class AUEncoder(nn.Module):
    """frames -> AU code `a` (what AU detection uses) and identity/appearance code `p`.

    `encode(frames)` takes RGB frames [N, H, W, 3] (any size; uint8 0..255 or float in [0, 1]; tensor or numpy)
    and applies the same resize and normalisation as training; `forward` takes normalised float [N, 3, S, S]
    (what training calls, with gradients; the user-facing module is `AUCodeModel`).
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
        """Normalised float [N, 3, S, S] (as `preprocess` returns) -> {"a": AU code [N, au_dim],
        "p": identity code [N, id_dim]}, in the weights' dtype, with gradients (training's call)."""
        h = self.trunk(x)
        return {"a": self.au_head(h), "p": self.id_head(h)}

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels already checked by `as_pixels(x, "NCHW")` ([N, 3, H, W], uint8 0..255 or float [0, 1]) ->
        normalised float32 [N, 3, S, S] on the encoder's device (resized bilinear, antialiased, if H, W != S)."""
        x = x.to(self.mean.device)
        x = x.float() * 255.0 if x.is_floating_point() else x.float()
        s = self.input_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        return (x - self.mean) / self.std

    def preprocess(self, frames) -> torch.Tensor:
        """RGB frames [N, H, W, 3], uint8 0..255 or float in [0, 1] (tensor or numpy) -> normalised float32
        [N, 3, S, S] on the encoder's device. Differentiable (fine-tuning calls it). Raises TypeError / ValueError
        as `as_pixels` does (wrong layout, float outside [0, 1])."""
        return self.normalise(as_pixels(frames, "NHWC").permute(0, 3, 1, 2))

    @torch.no_grad()
    def encode(self, frames, batch_size: int = 256) -> torch.Tensor:
        """AU codes [N, au_dim] (float32, CPU, no gradients) of RGB frames [N, H, W, 3] (channels last, as
        decoded video frames, any H, W): uint8 0..255, or float in [0, 1] (the same convention as
        `AUCodeModel.forward`); a torch tensor or a numpy array (PyAV / OpenCV frames; OpenCV's are BGR: flip them
        with frames[..., ::-1]). Encoded `batch_size` frames at a time on the weights' device. One frame
        [H, W, 3] is refused: pass frame[None].

        Raises:
            TypeError: `frames` is not array-like.
            ValueError: not [N, H, W, 3] (the message names the shape given and the likely fix), float values
                outside [0, 1] (e.g. 0..255 floats: divide by 255 or pass uint8), or `batch_size` < 1.
        """
        frames = as_pixels(frames, "NHWC")  # checked once, whole, before any batch runs
        if int(batch_size) < 1:
            raise ValueError(f"batch_size={batch_size}: frames per encoder call must be at least 1")
        w = next(self.parameters())  # inputs follow the weights' device and dtype (bf16 under DeepSpeed's bf16)
        out = [self(self.normalise(frames[i:i + batch_size].to(w.device).permute(0, 3, 1, 2)).to(w.dtype))["a"]
               .float().cpu() for i in range(0, len(frames), int(batch_size))]
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
    format, provenance) — the export format of `aupretrain-export`. The same JSON is also stored in the
    safetensors header's metadata (key `aupretrain`; safetensors' `__metadata__`, string values only), so the
    weights file describes itself: `load_encoder` reads the config from there, and a folder caught between its two
    files' renames by a re-export still loads the weights with their own config."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = json.dumps({"format": SAFETENSORS_FORMAT, "model": encoder.config, **(extra or {})}, indent=1)
    save_file(fp32_tensors(encoder.state_dict()), str(out / "model.safetensors"),
              metadata={"format": "pt", META_KEY: meta})
    (out / "config.json").write_text(meta)


META_KEY = "aupretrain"  # the safetensors metadata key holding config.json's JSON (exports since session 46)


def _export_config(weights, path) -> dict:
    """The export's JSON: from the weights file's own metadata where it has it (written with the weights, so the
    two always match), else (exports written before the metadata) from config.json beside it. Raises ValueError
    naming the file: unreadable, damaged, or not an aupretrain encoder; FileNotFoundError: a file the export needs
    is missing."""
    import json

    from safetensors import safe_open

    folder = weights.parent
    if not weights.is_file():
        raise FileNotFoundError(f"{path}: an export folder needs model.safetensors (and config.json)")
    try:
        with safe_open(str(weights), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as e:  # noqa: BLE001 - safetensors' SafetensorError, OSError: a damaged or truncated file
        raise ValueError(f"{weights}: not a readable safetensors file, damaged or truncated "
                         f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    source, text = (weights, header[META_KEY]) if META_KEY in header else (folder / "config.json", None)
    if text is None:
        if not source.is_file():
            raise FileNotFoundError(f"{path}: an export folder needs config.json and model.safetensors (this "
                                    f"{weights.name} does not carry its config)")
        try:
            text = source.read_text()
        except UnicodeDecodeError as e:
            raise ValueError(f"{source}: not readable JSON ({e})") from None
    try:
        meta = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{source}: not readable JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != SAFETENSORS_FORMAT or not isinstance(meta.get("model"),
                                                                                                   dict):
        got = meta.get("format") if isinstance(meta, dict) else None
        raise ValueError(f"{source}: not an aupretrain encoder (format={got!r})")
    return meta


def load_encoder(path, map_location: str = "cpu") -> AUEncoder:
    """Load an encoder for feature extraction or fine-tuning: an export folder (`config.json` +
    `model.safetensors`, from `aupretrain-export`), its `model.safetensors`, or a training run's `encoder.pt`.
    An export's config is read from `model.safetensors`' own metadata where it carries it (`save_encoder_folder`),
    else from `config.json`.

    `encoder.pt` is read with `torch.load(weights_only=True)`: tensors, numbers, strings, lists and dicts only,
    so a file carrying any other pickled object is refused instead of running it.

    Raises:
        FileNotFoundError: nothing loadable at `path`.
        ValueError: not an aupretrain encoder, a file that does not parse (damaged, truncated, not written by
            `torch.save` / safetensors), an `encoder.pt` holding objects other than plain data ("refused"), or
            weights that do not fit the saved model config — always naming the file.
    """
    from pathlib import Path

    p = Path(path)
    weights = p / "model.safetensors" if p.is_dir() else p if p.suffix == ".safetensors" else None
    if weights is not None:  # an export folder, or the weights file given by name (renamed, too)
        from safetensors.torch import load_file

        meta = _export_config(weights, path)
        try:
            state = load_file(str(weights), device=map_location)
        except Exception as e:  # noqa: BLE001 - safetensors' SafetensorError, OSError: a damaged or truncated file
            raise ValueError(f"{weights}: not a readable safetensors file, damaged or "
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

    forward(x): x is RGB face crops [N, 3, H, W] (channels first, any H, W; aligned as `aupretrain-pack` cuts
    them), uint8 0..255 or float in [0, 1] (float 0..255 is refused: divide by 255), a torch tensor or a numpy
    array; moved to the weights' device, resized (bilinear, antialiased) to the training input size and
    normalised inside. Returns the AU code [N, D] (float32, on the weights' device). `encode(frames)` takes
    channels-last frames [N, H, W, 3] instead. `encoder` is the underlying AUEncoder.

    The parameters are frozen (requires_grad False) unless `trainable=True`, so codes need no `.detach()` before
    `.numpy()`; to fine-tune, call `.requires_grad_(True)` and `.train()` (gradients then flow through forward).
    """

    def __init__(self, encoder: AUEncoder, trainable: bool = False):
        super().__init__()
        self.encoder = encoder
        if not trainable:
            self.requires_grad_(False)

    @property
    def au_dim(self) -> int:
        """Size D of the AU code (the encoder's `au_dim`)."""
        return self.encoder.au_dim

    @property
    def config(self) -> dict:
        """The encoder's model config (with `input_size`), as saved with it."""
        return self.encoder.config

    def forward(self, x) -> torch.Tensor:
        """AU codes [N, D] (float32) of RGB face crops `x` [N, 3, H, W], uint8 0..255 or float in [0, 1].

        Raises:
            TypeError: `x` is not array-like.
            ValueError: not [N, 3, H, W] (the message names the shape given and the likely fix, e.g. permute
                channels-last frames or use `encode`), or float values outside [0, 1] (naming dtype, min and max).
        """
        x = as_pixels(x, "NCHW")
        w = next(self.encoder.parameters())
        return self.encoder(self.encoder.normalise(x).to(w.dtype))["a"].float()

    @torch.no_grad()
    def encode(self, frames, batch_size: int = 256) -> torch.Tensor:
        """AU codes [N, D] (float32, CPU, no gradients) of RGB frames [N, H, W, 3] (channels last, as decoded video
        frames), uint8 0..255 or float in [0, 1], tensor or numpy; see `AUEncoder.encode` (its errors too)."""
        return self.encoder.encode(frames, batch_size)
