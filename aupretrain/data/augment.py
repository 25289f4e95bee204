"""Augmentations written in torch, OpenCV and numpy: the baseline loader's per-view geometry (`geometry_view`,
DALI's operators re-implemented: `rotate` with clamped borders, a random square crop resized with antialiasing),
the DALI reader's view geometry on the host (`host_views`: OpenCV warps after a decode-only pipeline, on CPU),
the float reference of a whole view (`augment_view`: + `brightness_contrast` with contrast centre 128, `hsv` as
a linear map in YIQ space) and its Gaussian blur (`blur_clips`); the colour jitter, blur and normalisation both
loaders apply to their uint8 batches (`finish_views`: one 3x3 colour map per clip, on the batch's device); and
the optional per-frame similarity warp both loaders apply after it (`jitter_frames`), and the per-view sensor
noise they add last (`noise_views`).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .dataset import ReaderSettings

# RGB <-> YIQ (NTSC), the colour space of DALI's `hsv` operator
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_RGB = torch.linalg.inv(_YIQ)


def geometry_view(frames: torch.Tensor, s: ReaderSettings, g: torch.Generator) -> torch.Tensor:
    """The geometric part of one view of a clip: uint8 [T, H, W, 3] -> float [T, 3, S, S] in grey levels (0..255):
    one rotation about the centre (same size, borders clamped: DALI's keep_size `rotate`) and one square crop of
    the sampled area fraction anywhere in the frame, resized to S = `s.input_size` with antialiasing, both drawn
    once from `g` and applied to all T frames."""
    u = lambda lo, hi: float(torch.empty(()).uniform_(lo, hi, generator=g))  # noqa: E731
    x = frames.permute(0, 3, 1, 2).float()
    t, _, h, w = x.shape
    if s.rotate:
        a = math.radians(u(-s.rotate, s.rotate))
        theta = torch.tensor([[math.cos(a), -math.sin(a) * h / w, 0.0], [math.sin(a) * w / h, math.cos(a), 0.0]])
        grid = F.affine_grid(theta.expand(t, 2, 3), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if tuple(s.scale) != (1.0, 1.0):
        side = math.sqrt(u(*s.scale))
        y0, x0 = u(0.0, 1.0) * (1 - side), u(0.0, 1.0) * (1 - side)
        x = x[:, :, int(y0 * h):int(y0 * h) + max(1, round(side * h)), int(x0 * w):int(x0 * w) + max(1, round(side * w))]
    return F.interpolate(x, size=(s.input_size, s.input_size), mode="bilinear", antialias=True, align_corners=False)


def geometry_view_uint8(frames: torch.Tensor, s: ReaderSettings, g: torch.Generator) -> torch.Tensor:
    """`geometry_view` rounded back to uint8 in DALI's layout: uint8 [T, H, W, 3] -> uint8 [T, S, S, 3] (what the
    DALI reader's affine warp hands on; the baseline loader's workers send this, a quarter of float's bytes, and
    the colour, blur and normalisation follow on the batch: `finish_views`)."""
    x = geometry_view(frames, s, g).round_().clamp_(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous()


def working_size(s: ReaderSettings, source_size: int = 0) -> int:
    """Side (pixels) to which the decoded frames are first resized, once for both views: the smallest crop
    (`s.scale[0]` of the area) then covers about `s.input_size` pixels, so each view's warp never downsamples
    by more than 1/sqrt(scale[0]) (antialiasing is left to this shared resize). 0 when the packed frames
    (`source_size`, the manifest's `size`; 0 if unknown) are no larger than that: the views warp from them."""
    need = math.ceil(s.input_size / math.sqrt(max(float(s.scale[0]), 1e-3)))
    return 0 if 0 < source_size <= need else need


def view_draws(s: ReaderSettings, b: int, g: torch.Generator) -> torch.Tensor:
    """One geometry draw per clip of a view, from `g`: [B, 4] = (side, x0, y0, angle) — the crop's relative side
    (sqrt of an area fraction uniform in `s.scale`), its top-left corner anywhere in the frame (relative: uniform
    in [0, 1 - side]) and the in-plane angle (radians, uniform in +-`s.rotate` degrees). The DALI reader's
    parameterisation of a view (`dali_reader.build_pipeline`)."""
    r = torch.rand(b, 4, generator=g, dtype=torch.float64)
    lo, hi = (math.sqrt(float(v)) for v in s.scale)
    side = torch.sqrt(s.scale[0] + (s.scale[1] - s.scale[0]) * r[:, 0]) if hi > lo else torch.full((b,), lo,
                                                                                                   dtype=torch.float64)
    angle = (r[:, 3] * 2 - 1) * math.radians(s.rotate)
    return torch.stack([side, r[:, 1] * (1 - side), r[:, 2] * (1 - side), angle], 1)


def warp_matrix(draw, w: int, h: int, size: int) -> np.ndarray:
    """OpenCV's inverse map (destination pixel index -> source pixel index, for `cv2.WARP_INVERSE_MAP`) of one view
    draw (`view_draws`' row) on frames w x h resized to size x size. In continuous coordinates (pixel centres at
    +0.5) the source point of destination point d is c + R(-a) (wh * (o + side * d / size) - c), c the frame's
    centre, o the crop's corner: rotation about the centre, crop anywhere in the rotated frame, resize — the
    matrix of the DALI reader's `warp_affine`, shifted to OpenCV's pixel-index convention."""
    side, ox, oy, a = (float(v) for v in draw)
    cos, sin = math.cos(a), math.sin(a)
    sx, sy = w * side / size, h * side / size
    px, py = w * ox - w * 0.5, h * oy - h * 0.5
    m = np.array([[cos * sx, sin * sy, w * 0.5 + cos * px + sin * py],
                  [-sin * sx, cos * sy, h * 0.5 - sin * px + cos * py]])
    m[:, 2] += m[:, :2] @ (0.5, 0.5) - 0.5  # continuous -> index coordinates, on both sides of the map
    return m


def host_views(clips: torch.Tensor, s: ReaderSettings, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Both views' geometry of a decoded batch, on the host with OpenCV: uint8 [B, T, H, W, 3] (channels last, as
    DALI decodes it) -> two uint8 [B, T, S, S, 3], S = `s.input_size`, for `finish_views`.

    Per clip and view one draw from `g` (`view_draws`; with `s.shared_geometry` view 2 reuses view 1's), applied
    alike to the clip's T frames: frames larger than `working_size` are first resized once for both views
    (`cv2.INTER_AREA`, antialiased), then each frame of a view is one `cv2.warpAffine` (bilinear, borders
    replicated) composing rotation, crop and resize (`warp_matrix`) — or, with no rotation configured, the crop
    rounded to the pixel grid and resized (`cv2.resize`, bilinear: half a warp's time). The DALI reader's geometry
    (`data.geometry=dali`) as OpenCV computes it: on CPU DALI's resampling costs ~10x OpenCV's per frame
    (measured, `bench/data.py`; docs/benchmarks.md "Input pipelines"), so there the DALI reader decodes and this
    cuts the views (`data.geometry=auto`). With `s.shared_geometry` view 2 is view 1 (the same tensor: the draws
    are shared, and `finish_views` does not write into its input). Raises AssertionError when `clips` is not uint8
    [B, T, H, W, 3] (a caller's fault, not the data's: the reader's damage recovery does not catch it)."""
    import cv2

    x = clips.numpy() if isinstance(clips, torch.Tensor) else np.asarray(clips)
    if x.dtype != np.uint8 or x.ndim != 5 or x.shape[-1] != 3:
        raise AssertionError(f"host_views needs uint8 [B, T, H, W, 3] frames, got {x.dtype} {list(x.shape)}")
    b, t, h, w, _ = x.shape
    size = s.input_size
    work = working_size(s, max(h, w))
    if work:  # the views would downsample: antialias once, for both
        small = np.empty((b, t, work, work, 3), np.uint8)
        for i in range(b):
            for j in range(t):
                cv2.resize(x[i, j], (work, work), dst=small[i, j], interpolation=cv2.INTER_AREA)
        x, h, w = small, work, work

    def cut(draws: torch.Tensor) -> torch.Tensor:
        out = np.empty((b, t, size, size, 3), np.uint8)
        for i in range(b):
            if not s.rotate:  # a crop on the pixel grid, resized: half a warp's time (measured)
                side, ox, oy = (float(d) for d in draws[i, :3])
                cw, ch = max(1, round(side * w)), max(1, round(side * h))
                x0, y0 = min(round(ox * w), w - cw), min(round(oy * h), h - ch)
                for j in range(t):
                    cv2.resize(x[i, j, y0:y0 + ch, x0:x0 + cw], (size, size), dst=out[i, j],
                               interpolation=cv2.INTER_LINEAR)
                continue
            m = warp_matrix(draws[i], w, h, size)
            for j in range(t):
                cv2.warpAffine(x[i, j], m, (size, size), dst=out[i, j], borderMode=cv2.BORDER_REPLICATE,
                               flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        return torch.from_numpy(out)

    v1 = cut(view_draws(s, b, g))
    return v1, (v1 if s.shared_geometry else cut(view_draws(s, b, g)))


def augment_view(frames: torch.Tensor, s: ReaderSettings, g: torch.Generator,
                 geometry: torch.Generator | None = None) -> torch.Tensor:
    """One augmented view of a clip in float arithmetic throughout, the reference the loaders' uint8 pipelines
    (`geometry_view_uint8` + `finish_views`) are checked against: uint8 [T, H, W, 3] -> normalised float
    [T, 3, S, S]; one draw of every random parameter per call, shared by all T frames; the geometry is
    `geometry_view`'s, drawn from `geometry` when given (views drawn from generators in the same state share it:
    `augment.shared_geometry`), else from `g`; the colour map is `colour_maps`', drawn from `g`. (No blur:
    `blur_clips`.)"""
    x = geometry_view(frames, s, geometry or g)
    maps = colour_maps(s, 1, g)  # the DALI reader's colour map, drawn for this one clip
    if maps is not None:
        x = torch.einsum("ij,tjhw->tihw", maps[0][0], x) + maps[1][0].view(1, 3, 1, 1)
    x = x.clamp(0, 255)
    mean = torch.tensor(s.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(s.std).view(1, 3, 1, 1) * 255
    return (x - mean) / std


def colour_maps(s: ReaderSettings, b: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per clip, one draw from `g` of brightness b and contrast c (`s.brightness`, `s.contrast`:
    y = b (128 + c (x - 128)), DALI's `brightness_contrast` with contrast centre 128), then of hue h (degrees,
    uniform in +-`s.hue`) and saturation (`s.saturation`: a rotation and scaling of the chroma plane in YIQ
    space, DALI's `hsv`), composed into one map per clip: (m [B, 3, 3], off [B, 3]) acting on RGB 0..255.
    None (and no draw) when every range is neutral."""
    m, off, on = torch.eye(3).repeat(b, 1, 1), torch.zeros(b, 3), False
    if tuple(s.brightness) != (1.0, 1.0) or tuple(s.contrast) != (1.0, 1.0):
        br = s.brightness[0] + (s.brightness[1] - s.brightness[0]) * torch.rand(b, generator=g)
        ct = s.contrast[0] + (s.contrast[1] - s.contrast[0]) * torch.rand(b, generator=g)
        m, off, on = m * (br * ct).view(b, 1, 1), (br * 128.0 * (1 - ct)).view(b, 1).expand(b, 3), True
    if s.hue or tuple(s.saturation) != (1.0, 1.0):
        a = torch.deg2rad((torch.rand(b, generator=g) * 2 - 1) * s.hue)
        sat = s.saturation[0] + (s.saturation[1] - s.saturation[0]) * torch.rand(b, generator=g)
        rot = torch.zeros(b, 3, 3)
        rot[:, 0, 0] = 1.0
        rot[:, 1, 1], rot[:, 1, 2] = sat * a.cos(), -sat * a.sin()
        rot[:, 2, 1], rot[:, 2, 2] = sat * a.sin(), sat * a.cos()
        c = _RGB @ rot @ _YIQ
        m, off, on = c @ m, (c @ off.unsqueeze(-1)).squeeze(-1), True
    return (m, off) if on else None


def without_augmentation(s: ReaderSettings) -> ReaderSettings:
    """`s` with every draw off: the whole frame resized to `s.input_size` (antialiased), no rotation, crop, colour,
    blur, sensor noise or per-frame warp — each frame as the probe's `encode()` reads it. What the clean view
    (`s.clean_view`, `clean_view`) and the engine's fits on un-augmented clips (`engine.prefit`) read."""
    return dataclasses.replace(s, scale=(1.0, 1.0), rotate=0.0, shared_geometry=True, brightness=(1.0, 1.0),
                               contrast=(1.0, 1.0), saturation=(1.0, 1.0), hue=0.0, blur_sigma=(0.0, 0.0),
                               frame_shift=0.0, frame_scale=0.0, frame_rotate=0.0, noise_sigma=(0.0, 0.0),
                               hflip=0.0, clean_view=False)


def clean_view(x: torch.Tensor, s: ReaderSettings) -> torch.Tensor:
    """The clean view's normalisation (`s.clean_view`): uint8 [B, T, S, S, 3] whole frames resized -> normalised
    float [B, T, 3, S, S] (`finish_views` with every draw off; the loader's generator is not touched)."""
    return finish_views(x, without_augmentation(s), torch.Generator())


def finish_views(x: torch.Tensor, s: ReaderSettings, g: torch.Generator, taps: int = 5,
                 opencv: bool | None = None) -> torch.Tensor:
    """Colour jitter, Gaussian blur and normalisation of one view of a DALI batch, where the batch lies: uint8 RGB
    [B, T, S, S, 3] (channels last, as DALI emits it) -> normalised float [B, T, 3, S, S].

    Per clip, from `g` (the loader's saved generator: a resume repeats the draws): the colour map of
    `colour_maps`, clamped to [0, 255]; a blur sigma uniform in `s.blur_sigma` (pixels; a separable `taps`-tap
    kernel, reflected borders: DALI's `gaussian_blur`), off when its maximum is 0; then the model's per-channel
    mean and std (times 255). The same operators, in the same order, as the float reference `augment_view` +
    `blur_clips`; both loaders finish their uint8 batches with it. The result keeps DALI's channels-last memory
    layout (a permuted view: `stride(2) == 1`), which is the layout the model's channels-last convolutions read,
    so no pass re-lays the pixels out on the way (`engine.step` concatenates the two views in that layout). The frames stay uint8 through the reader (a
    quarter of the bytes): on the GPU the arithmetic is torch's on the device; on CPU it is OpenCV's `transform`
    and `GaussianBlur` on uint8 (rounded to grey levels, as DALI's uint8 operators were) and one lookup-table
    pass to float (`cv2.LUT`) — together ~3x faster than DALI's CPU operators or torch's, measured in
    `bench/data.py` (docs/benchmarks.md). `opencv`: None = on CPU tensors; False = torch's
    operators whatever the device (what the GPU runs)."""
    b = x.shape[0]
    maps = colour_maps(s, b, g)
    lo, hi = s.blur_sigma
    sigma = lo + (hi - lo) * torch.rand(b, generator=g) if hi > 0 else None
    scale = 1.0 / (torch.tensor(s.std) * 255.0)
    shift = -torch.tensor(s.mean) * 255.0 * scale
    if not (x.device.type == "cpu" if opencv is None else opencv):
        y = x.permute(0, 1, 4, 2, 3).float()
        if maps is not None:
            y = map_colours(y, *maps)
        if sigma is not None:
            y = blur_clips(y, sigma, taps)
        return y.mul_(scale.view(3, 1, 1).to(y.device)).add_(shift.view(3, 1, 1).to(y.device))
    import cv2

    src = x.numpy()
    if maps is not None:
        aff = torch.cat([maps[0], maps[1].unsqueeze(-1)], 2).numpy()
        out = np.empty_like(src)
        for i in range(b):  # all frames of a clip as one image: a per-pixel map
            out[i] = cv2.transform(src[i].reshape(-1, src.shape[-2], 3), aff[i]).reshape(src.shape[1:])
        src = out
    if sigma is not None:
        out = np.empty_like(src)
        for i in range(b):
            sg = float(sigma[i])
            for t in range(src.shape[1]):
                cv2.GaussianBlur(src[i, t], (taps, taps), sg, dst=out[i, t], sigmaY=sg,
                                 borderType=cv2.BORDER_REFLECT_101)
        src = out
    # normalisation as a per-channel lookup table (uint8 -> float32): one pass, no relayout
    lut = (torch.arange(256.0).view(256, 1) * scale + shift).numpy().astype(np.float32).reshape(1, 256, 3)
    y = cv2.LUT(src.reshape(-1, src.shape[-2], 3), lut).reshape(src.shape)
    return torch.from_numpy(y).permute(0, 1, 4, 2, 3)


def map_colours(x: torch.Tensor, m: torch.Tensor, off: torch.Tensor) -> torch.Tensor:
    """y_c = sum_j m[b, c, j] x_j + off[b, c] for every pixel of clip b, clamped to [0, 255]: x float
    [B, T, 3, H, W] (0..255), m [B, 3, 3], off [B, 3] -> new float [B, T, 3, H, W], on x's device (three
    fused multiply-adds per channel: a batched 3x3 matrix product is several times slower for K = 3)."""
    b, dev = x.shape[0], x.device
    y = torch.empty_like(x)
    for c in range(3):
        w = m[:, c].to(dev).view(b, 3, 1, 1, 1)
        torch.mul(x[:, :, 0], w[:, 0], out=y[:, :, c])
        y[:, :, c].addcmul_(x[:, :, 1], w[:, 1]).addcmul_(x[:, :, 2], w[:, 2]).add_(off[:, c].to(dev).view(b, 1, 1, 1))
    return y.clamp_(0.0, 255.0)


def blur_clips(x: torch.Tensor, sigma: torch.Tensor, taps: int = 5) -> torch.Tensor:
    """Gaussian blur of every frame of each clip with that clip's sigma (pixels): x [B, T, C, H, W] float,
    sigma [B] -> [B, T, C, H, W]. A separable `taps`-tap kernel, reflected borders (DALI's `gaussian_blur`
    with window_size=taps). Linear, so it commutes with the per-channel normalisation done before it."""
    if x.device.type == "cpu":  # OpenCV's separable filter: ~25x faster than torch's ops for this on CPU
        import cv2

        planes = x.detach().reshape(x.shape[0], -1, *x.shape[-2:]).contiguous().numpy()
        out = np.empty_like(planes)
        for b in range(planes.shape[0]):
            sg = float(sigma[b])
            for j in range(planes.shape[1]):
                out[b, j] = cv2.GaussianBlur(planes[b, j], (taps, taps), sg, sigmaY=sg, borderType=cv2.BORDER_REFLECT_101)
        return torch.from_numpy(out).view(x.shape)
    r = taps // 2
    k = torch.exp(-torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)[None] ** 2
                  / (2 * sigma.to(x)[:, None] ** 2))
    k = (k / k.sum(1, keepdim=True)).view(-1, taps, 1, 1, 1, 1)  # [B, taps, 1, 1, 1, 1]
    # shifted copies weighted per clip (a depthwise convolution with one kernel per clip; PyTorch's grouped
    # conv2d is several times slower for this shape on CPU)
    p = F.pad(x.flatten(0, 1), (r, r, 0, 0), mode="reflect").view(*x.shape[:-1], x.shape[-1] + 2 * r)
    y = sum(k[:, i] * p[..., i:i + x.shape[-1]] for i in range(taps))
    p = F.pad(y.flatten(0, 1), (0, 0, r, r), mode="reflect").view(*x.shape[:-2], x.shape[-2] + 2 * r, x.shape[-1])
    return sum(k[:, i] * p[..., i:i + x.shape[-2], :] for i in range(taps))


def flip_views(batch: dict, s: ReaderSettings, g: torch.Generator) -> None:
    """Mirror whole clips of `batch["view1"]` and `batch["view2"]` (float [B, T, 3, S, S]) left to right, in place
    of the dict entries: each clip of a view with probability `s.hflip`, one draw per clip and view from `g` (the
    loader's saved generator: a resume repeats the draws), all its frames alike. With `s.shared_geometry` both views
    of a clip share the draw, so the views stay aligned. Nothing is drawn when `s.hflip` is 0, so the stream of
    every other draw is the same as without the knob. The labels are kept: the random horizontal flip of AU
    detectors (e.g. Shao et al., "Deep Adaptive Attention for Joint Facial Action Unit Detection and Face
    Alignment", ECCV 2018), which treats an AU as present on either side of the face."""
    if s.hflip <= 0:
        return
    b = batch["view1"].shape[0]
    draw = torch.rand(2, b, generator=g) < s.hflip
    if s.shared_geometry:
        draw[1] = draw[0]
    for i, k in enumerate(("view1", "view2")):
        idx = draw[i].nonzero().flatten()
        if len(idx):
            x = batch[k].clone()
            idx = idx.to(x.device)
            x[idx] = x[idx].flip(-1)
            batch[k] = x


def jitter_frames(x: torch.Tensor, shift: float, scale: float, rotate: float, g: torch.Generator) -> torch.Tensor:
    """An independent random similarity warp of every frame: x [B, T, C, S, S] float -> same shape.

    Per frame: translation uniform in +-`shift` (fraction of the side), zoom uniform in 1 +- `scale`, rotation
    uniform in +-`rotate` degrees, about the centre; borders replicated. Unlike the per-view operators (one
    draw per clip, shared by its frames), this changes where the face sits from frame to frame, so in-plane
    head motion stops telling a clip's frames apart and the temporal contrastive task has to read the face
    itself (the residual jitter of a landmark alignment, made deliberate)."""
    b, t = x.shape[:2]
    n = b * t
    r = lambda: torch.rand(n, generator=g) * 2 - 1  # noqa: E731
    ang, zoom = r() * math.radians(rotate), 1 + r() * scale
    tx, ty = r() * 2 * shift, r() * 2 * shift  # affine_grid's units: the side is 2
    cos, sin = ang.cos() / zoom, ang.sin() / zoom
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1).to(x)
    flat = x.reshape(n, *x.shape[2:])
    grid = F.affine_grid(theta, list(flat.shape), align_corners=False)
    return F.grid_sample(flat, grid, mode="bilinear", padding_mode="border", align_corners=False).view(x.shape)


def jitter_views(batch: dict, s: ReaderSettings, g: torch.Generator) -> None:
    """`jitter_frames` on `batch["view1"]` and `batch["view2"]` with the settings' `frame_shift`, `frame_scale`,
    `frame_rotate`, drawn from `g` (the loader's saved generator); nothing when all three are 0. With
    `s.shared_geometry` both views of a frame get the same warp (drawn once), so the views stay aligned."""
    if not (s.frame_shift or s.frame_scale or s.frame_rotate):
        return
    state = g.get_state()
    for k in ("view1", "view2"):
        if s.shared_geometry:  # view 2 replays view 1's draws
            g.set_state(state)
        batch[k] = jitter_frames(batch[k], s.frame_shift, s.frame_scale, s.frame_rotate, g)


def noise_views(batch: dict, s: ReaderSettings, g: torch.Generator) -> None:
    """Add independent Gaussian noise to `batch["view1"]` and `batch["view2"]` (normalised float
    [B, T, 3, S, S]), in place of the dict entries: one sigma per clip and view, uniform in `s.noise_sigma` (grey
    levels of 0..255, converted with the model's per-channel std), then a fresh draw for every pixel, channel,
    frame and view from `g` (the loader's saved generator: a resume repeats the draws). Nothing when its maximum
    is 0.

    Why: both views of a frame are cut from the same decoded frame, so they share its sensor noise and compression
    pattern — a per-frame fingerprint that tells a clip's frames apart without reading the face (with
    `shared_geometry`, measured: fresh noise of 3 grey levels moves the code two thirds as far as a frame
    160 ms later). Noise drawn per view, several times the source's, hides that fingerprint (measured on the
    still-head control: the in-clip retrieval falls from 0.70 to 0.43, docs/benchmarks.md)."""
    lo, hi = s.noise_sigma
    if hi <= 0:
        return
    b = batch["view1"].shape[0]
    sigma = lo + (hi - lo) * torch.rand(2, b, generator=g)
    per_channel = 1.0 / (torch.tensor(s.std) * 255.0)  # grey levels -> normalised units, per channel
    for i, k in enumerate(("view1", "view2")):
        x = batch[k]
        # drawn on the CPU from `g`, in x's memory layout (DALI's views are channels-last), then added where x lies
        n = torch.empty_like(x, dtype=torch.float32, device="cpu").normal_(generator=g)
        n.mul_(sigma[i].view(b, 1, 1, 1, 1) * per_channel.view(1, 1, 3, 1, 1))
        batch[k] = x + n.to(x.device, x.dtype)
