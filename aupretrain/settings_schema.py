"""The table of settings users get wrong (`SCHEMA`: each key's type, range or choices, as a `Spec`) and how a
value is shown in a refusal (`_show`). The checks that read the table: `aupretrain.settings` (`validate`) and
`aupretrain.settings_checks`.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from .config import default_config

def _show(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, str):
        return repr(v) if v == "" or not re.fullmatch(r"[\w./:+@-]+", v) else v
    return str(v)


@dataclass(frozen=True)
class Spec:
    """What one setting must be: `kind` int | number | bool | choice | pair (two numbers lo <= a <= b <= hi) |
    ints | numbers (a list of whole numbers / numbers, `size` of them, else at least one, each within the bounds),
    bounds `lo`/`hi` (inclusive; `above`: lo excluded), `choices`, `null` (None allowed), and `what` it means."""
    kind: str
    lo: float | None = None
    hi: float | None = None
    above: bool = False
    choices: tuple = ()
    null: bool = False
    what: str = ""
    size: int | None = None

    def need(self) -> str:
        """What a valid value is, in words for an error message, e.g. "a whole number >= 1 or null (what it means)"."""
        if self.kind == "choice":
            s = "one of " + ", ".join(map(str, self.choices))
        elif self.kind == "bool":
            s = "true or false"
        else:
            n = f"{self.size} " if self.size else ""
            s = {"int": "a whole number", "number": "a number", "pair": "two numbers [a, b] with a <= b",
                 "ints": f"a list of {n}whole numbers", "numbers": f"a list of {n}numbers"}[self.kind]
            lo = f"{'>' if self.above else '>='} {self.lo:g}" if self.lo is not None else ""
            hi = f"<= {self.hi:g}" if self.hi is not None else ""
            if lo or hi:
                s += (", each " if self.kind in ("pair", "ints", "numbers") else " ") + " and ".join(
                    x for x in (lo, hi) if x)
        return s + (" or null" if self.null else "") + (f" ({self.what})" if self.what else "")

    def example(self, key: str) -> str:
        """`key=<a valid value>`: the config tree's default when it is valid, else one built from the bounds."""
        try:
            node: Any = default_config()
            for part in key.split("."):
                node = node[part]
            if node is not None and self.ok(node):
                return f"{key}={_show(node).replace(' ', '')}"
        except Exception:  # noqa: BLE001 - a key only an option group has: build one
            pass
        if self.kind == "choice":
            return f"{key}={self.choices[0]}"
        if self.kind == "bool":
            return f"{key}=true"
        if self.kind == "pair":
            lo, hi = self.lo or 0, self.hi if self.hi is not None else 1
            return f"{key}=[{lo:g},{hi:g}]"
        if self.kind in ("ints", "numbers"):
            v = (self.lo or 0) + (1 if self.above else 0)
            return f"{key}=[{','.join([f'{v:g}'] * (self.size or 1))}]"
        v = self.lo if self.lo is not None else 0
        if self.above:
            v = v + 1 if self.kind == "int" else (v or 0) + (0.1 if self.hi is not None and self.hi <= 1 else 1)
        return f"{key}={int(v) if self.kind == 'int' else v:g}"

    def ok(self, v: Any) -> bool:
        """Whether `v` satisfies this spec: None only with `null`; bools for bool only (never a number); a choice
        among `choices`; finite numbers (ints for int) within the bounds; for a pair a list or tuple of two such numbers
        with a <= b."""
        if v is None:
            return self.null
        if self.kind == "bool":
            return isinstance(v, bool)
        if self.kind == "choice":
            return isinstance(v, (str, int)) and not isinstance(v, bool) and v in self.choices
        listed = self.kind in ("pair", "ints", "numbers")
        if listed and not isinstance(v, (list, tuple)):
            return False
        vals = list(v) if listed else [v]
        if self.kind == "pair" and (len(vals) != 2 or not _num(vals[0]) or not _num(vals[1]) or vals[0] > vals[1]):
            return False
        if self.kind in ("ints", "numbers") and (not vals or (self.size is not None and len(vals) != self.size)):
            return False
        for x in vals:
            if not _num(x) or (self.kind in ("int", "ints") and not isinstance(x, int)):
                return False
            if self.lo is not None and (x <= self.lo if self.above else x < self.lo):
                return False
            if self.hi is not None and x > self.hi:
                return False
        return True


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _int(lo: float | None = 0, hi: float | None = None, null: bool = False, what: str = "") -> Spec:
    return Spec("int", lo, hi, null=null, what=what)


def _num_spec(lo: float | None = None, hi: float | None = None, above: bool = False, null: bool = False,
              what: str = "") -> Spec:
    return Spec("number", lo, hi, above, null=null, what=what)


def _choice(*choices, what: str = "") -> Spec:
    return Spec("choice", choices=choices, what=what)


def _ints(lo: float | None = 1, size: int | None = None, what: str = "") -> Spec:
    return Spec("ints", lo, what=what, size=size)


BOOL = Spec("bool")
UNIT = Spec("pair", 0.0, 1.0)
POSITIVE = Spec("pair", 0.0)
# The settings users get wrong, checked by `validate` before anything starts (keys absent from the composed config,
# e.g. objective.temperature under objective=supervised, are skipped). Deeper checks stay where the knowledge is:
# a method's own settings (`methods/*.check`), resume compatibility (`engine/resume.py`), the shards themselves.
SCHEMA: dict[str, Spec] = {
    "run.seed": _int(None),
    "data.batch_size": _int(1, what="clips per rank per micro-step"),
    "data.input_size": _int(8, what="model input, pixels"),
    "data.loader": _choice("auto", "dali", "torch"),
    "data.device": _choice("auto", "gpu", "cpu"),
    "data.geometry": _choice("auto", "dali", "opencv"),
    "data.num_threads": _int(1),
    "data.prefetch": _int(1),
    "data.shuffle_buffer": _int(1, what="clips"),
    "data.verify_checksums": BOOL,
    "data.clean_view": BOOL,
    "data.augment.scale": Spec("pair", 0.0, 1.0, above=True, what="area fraction of the random crop"),
    "data.augment.rotate": _num_spec(0, 180, what="degrees"),
    "data.augment.brightness": POSITIVE,
    "data.augment.contrast": POSITIVE,
    "data.augment.saturation": POSITIVE,
    "data.augment.hue": _num_spec(0, 180, what="degrees"),
    "data.augment.blur_sigma": POSITIVE,
    "data.augment.noise_sigma": POSITIVE,
    "data.augment.hflip": _num_spec(0, 1, what="probability"),
    "data.augment.frame_jitter.shift": _num_spec(0, 0.5, what="fraction of the side"),
    "data.augment.frame_jitter.scale": _num_spec(0, 0.5),
    "data.augment.frame_jitter.rotate": _num_spec(0, 180, what="degrees"),
    "train.steps": _int(1, what="optimizer steps"),
    "train.log_every": _int(1),
    "train.checkpoint_every": _int(0, what="0: only at the end"),
    "train.signal_check_every": _int(1),
    "train.keep_checkpoints": _int(0, what="0: all"),
    "train.stop_at": _int(1, null=True),
    "train.eval_at_end": BOOL,
    "train.torch_threads": _int(1, null=True),
    "train.collective_timeout_s": _num_spec(0, above=True, null=True, what="seconds"),
    "train.online_probe.every": _int(0, what="0: off"),
    "train.online_probe.identities": _int(2),
    "train.online_probe.frames": _int(1),
    "train.online_probe.probe_steps": _int(1),
    "optim.name": _choice("adamw", "lars", "lamb"),
    "optim.lr": _num_spec(0, what="peak learning rate"),
    "optim.lr_scaling": _choice("none", "linear", "sqrt"),
    "optim.reference_batch": _int(1),
    "optim.weight_decay": _num_spec(0),
    "optim.betas": Spec("pair", 0.0, 1.0),
    "optim.momentum": _num_spec(0, 1),
    "optim.warmup_steps": _int(0),
    "optim.min_lr_ratio": _num_spec(0, 1),
    "deepspeed.zero_optimization.stage": _choice(0, 1, 2, 3),
    "deepspeed.gradient_accumulation_steps": _int(1),
    "deepspeed.gradient_clipping": _num_spec(0),
    "model.widths": _ints(1, what="channels of each trunk stage"),
    "model.blocks": _ints(1, what="residual blocks of each trunk stage, one per width"),
    "model.stem_width": _int(1, what="channels of the stem convolution"),
    "model.stem_stride": _int(1, what="stride of the stem convolution"),
    "model.norm": _choice("group", "batch"),
    "model.norm_groups": _int(1, what="GroupNorm groups; with model.norm=group they divide every trunk width"),
    "model.au_grid": _int(0),
    "model.au_dim": _int(1),
    "model.id_dim": _int(1),
    "model.proj_hidden": _int(1),
    "model.proj_dim": _int(1),
    "model.mean": Spec("numbers", size=3, what="per-channel RGB mean, 0..1 scale"),
    "model.std": Spec("numbers", 0, above=True, size=3, what="per-channel RGB standard deviation, 0..1 scale"),
    "model.decoder.widths": _ints(1, what="channels of CIR's decoder stages"),
    "model.decoder.start": _int(1, what="side of the decoder's first feature map, doubled each stage"),
    "model.decoder.norm_groups": _int(1, what="the decoder's GroupNorm groups"),
    "objective.name": _choice("clp", "tcl", "simclr", "moco", "supervised"),
    "objective.temperature": _num_spec(0, above=True),
    "objective.margin": _num_spec(0),
    "objective.window": _int(0, what="frames"),
    "objective.tcl_weight": _num_spec(0, what="weight of CLP's TCL term"),
    "objective.cir.frames": _int(0, what="frames per clip for reconstruction, 0: all"),
    "objective.cir.flow_grid": _int(0, what="lattice side of the linear flow basis, 0: the conv flow decoder"),
    "objective.cir.texture_grid": _int(0, what="lattice side of the linear appearance basis, 0: none"),
    "objective.cir.rec_blur": _num_spec(0, what="pixels, Gaussian sigma"),
    "objective.cir.flow_init_std": _num_spec(0),
    "objective.cir.hog_weight": _num_spec(0, what="weight of CIR's HOG-change term, 0: off"),
    "objective.cir.hog_cell": _int(2, what="HOG cell side, pixels"),
    "objective.cir.hog_bins": _int(2, what="HOG orientation bins"),
    "objective.cir.hog_signed": BOOL,
    "objective.cir.hog_basis_weight": _num_spec(0, what="weight of the within-clip HOG basis term, 0: off"),
    "objective.cir.hog_basis_k": _int(1, what="within-clip HOG directions"),
    "objective.cir.hog_basis_fit_steps": _int(1, what="optimizer steps accumulated before the basis is fitted"),
    "objective.cir.hog_basis_centre": _choice("frame", "clip"),
    "objective.cir.hog_basis_fit": _choice("stream", "prefit"),
    "objective.cir.hog_basis_frames": _choice("views", "clean"),
    "objective.cir.hog_basis_whiten": _int(0, what="rank of the pooled HOG subspace of the within-clip-share fit, 0: off"),
    "objective.cir.hog_basis_colour": BOOL,
    "objective.cir.hog_basis_second_cell": _int(0, what="HOG cell side of a second grey basis, pixels; 0: none"),
    "objective.cir.id_adversary_weight": _num_spec(0, what="weight of the identity-confusion term, 0: off"),
    "objective.cir.id_adversary_classes": _int(2, what="identity classes of the confusion term's classifier"),
    "objective.cir.between_clip_weight": _num_spec(0, what="weight of the between-clip share term, 0: off"),
    "objective.queue_size": _int(1),
    "objective.momentum": _num_spec(0, 1),
    "tracking.enabled": BOOL,
    "tracking.start_timeout_s": _num_spec(0, what="seconds"),
    "tracking.retry_max_s": _num_spec(0, above=True, what="seconds"),
    "tracking.max_pending": _int(1),
    "tracking.flush_timeout_s": _num_spec(0, what="seconds"),
    "tracking.system_metrics_every_s": _num_spec(0, what="seconds, 0: off"),
    "eval.dataset": _choice("synthetic", "bp4d", "disfa", "gft"),
    "eval.split": _choice("validation", "test"),
    "eval.protocol": _choice("linear", "finetune"),
    "eval.select": _choice("auto", "none", "validation"),
    "eval.normalize": _choice("none", "video_median"),
    "eval.identities": _int(2),
    "eval.videos_per_identity": _int(1),
    "eval.frames": _int(1),
    "eval.frame_stride": _int(1),
    "eval.folds": _int(2),
    "eval.au_threshold": _num_spec(0, 5, null=True, what="intensity at which an AU is present: synthetic 0..1, "
                                   "DISFA 1..5; null for BP4D / GFT, which code occurrence"),
    "eval.validation_fraction": _num_spec(0, 1, above=True),
    "eval.batch_size": _int(1),
    "eval.probe.steps": _int(1),
    "eval.probe.lr": _num_spec(0, above=True),
    "eval.probe.batch_size": _int(1),
    "synth.identities": _int(1),
    "synth.videos_per_identity": _int(1),
    "synth.frames": _int(1),
    "synth.first_identity": _int(0),
    "synth.fps": _num_spec(0, above=True),
    "synth.size": _int(8, what="pixels"),
    "synth.workers": _int(0, what="0: one per core"),
    "synth.head_motion": _num_spec(0, what="scale of the head-pose motion; 0: a still head"),
    "pack.clip_len": _int(1, what="frames per clip"),
    "pack.stride": _int(1, what="frames between the frames of a clip"),
    "pack.clip_step": _int(1, null=True, what="frames between clip starts"),
    "pack.size": _int(8, what="pixels"),
    "pack.fps": _num_spec(0, above=True, null=True),
    "pack.frames_fps": _num_spec(0, above=True),
    "pack.samples_per_shard": _int(1),
    "pack.shuffle_buffer": _int(1, what="clips"),
    "pack.jpeg_quality": _int(1, 100),
    "pack.workers": _int(0, what="0: one per core"),
    "pack.align": _choice("detect", "center"),
    "pack.detector": _choice("mtcnn", "haar"),
    "pack.main_face": _choice("largest", "central"),
    "pack.detect_every": _int(1),
    "pack.landmarks_every": _int(1),
    "pack.min_face": _num_spec(0, 1, above=True),
    "pack.smooth_sigma": _num_spec(0),
    "pack.thresholds": Spec("numbers", 0.0, 1.0, above=True, size=3, what="MTCNN P-, R- and O-Net face probabilities"),
    "pack.link_iou": _num_spec(0, 1, above=True, what="box overlap that continues a track"),
    "pack.min_face_prob": _num_spec(0, 1, what="landmark-net face probability"),
    "pack.min_face_px": _num_spec(0, what="source pixels"),
    "pack.min_sharpness": _num_spec(0, what="variance of the Laplacian"),
}
