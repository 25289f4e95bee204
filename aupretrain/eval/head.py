"""`aupretrain-eval --save-head PATH`: one AU head trained on every labelled frame, kept for later use
(the file format: `aupretrain.models.head`).

PATH is a folder: `head.safetensors` (the probe's tensors: `bn.*` BatchNorm1d + `linear.*` Linear for the
linear protocol; `head.*` plus the fine-tuned `encoder.*` for `protocol=finetune`) and `head.json` (format,
protocol, AU names, per-AU thresholds, code dim, steps / epochs / lr, dataset, the encoder it was trained
on). Settings are chosen as in the evaluation (validation subjects carved from all subjects when
`eval.select` is validation), then the head is refitted on every frame.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..models.head import FORMAT, load_linear_head, save_head
from .datasets import LabelledFrames
from .probe import fit_au_probe, per_au_f1, predict
from .report import f1_summary, select_linear, select_mode

__all__ = ["FORMAT", "AUPredictor", "final_finetuned_head", "final_linear_head", "load_head", "load_linear_head",
           "open_linear_head", "save_head", "score_head"]


class AUPredictor(nn.Module):
    """Aligned face frames -> per-AU probabilities: an encoder's AU code through a saved head.

    `forward(frames)`: RGB uint8 [N, H, W, 3] -> P(AU present) [N, A] (float32); `aus` names the columns and
    `thresholds` [A] are the per-AU decision thresholds chosen when the head was trained."""

    def __init__(self, encoder, head: nn.Module, meta: dict):
        super().__init__()
        self.encoder, self.head, self.meta = encoder, head, meta
        self.aus = list(meta["aus"])
        self.thresholds = np.asarray(meta.get("thresholds", [0.5] * len(self.aus)), dtype=np.float32)

    @torch.no_grad()
    def forward(self, frames: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """P(AU present) [N, A] (float32, AU order `self.aus`) of aligned face crops `frames`, RGB uint8
        [N, H, W, 3] (channels last, as decoded), encoded `batch_size` frames at a time by the encoder's `encode`;
        compare with `self.thresholds` [A] to decide."""
        codes = self.encoder.encode(frames, batch_size)
        return torch.sigmoid(self.head(codes)).float()


def load_head(path: str | Path, encoder=None) -> AUPredictor:
    """A head saved by `aupretrain-eval --save-head` as an `AUPredictor`.

    Linear heads sit on `encoder` (the one they were trained on; its code size must match `code_dim`);
    fine-tuned heads carry their own encoder, so `encoder` is ignored for them.

    Raises:
        FileNotFoundError: no head.json / head.safetensors in `path`.
        ValueError: not an aupretrain AU head, or a linear head whose code size differs from the encoder's.
    """
    from safetensors.torch import load_file

    folder = Path(path)
    if not (folder / "head.json").is_file() or not (folder / "head.safetensors").is_file():
        raise FileNotFoundError(f"{path}: an AU head folder needs head.json and head.safetensors "
                                "(written by aupretrain-eval --save-head)")
    meta = json.loads((folder / "head.json").read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{folder / 'head.json'}: not an aupretrain AU head (format={meta.get('format')!r})")
    if meta.get("protocol") == "finetune":
        from ..models.encoder import AUEncoder

        st = load_file(str(folder / "head.safetensors"))
        cfg = dict(meta["encoder_config"])
        enc = AUEncoder(cfg, cfg.pop("input_size"))
        enc.load_state_dict({k[len("encoder."):]: v for k, v in st.items() if k.startswith("encoder.")})
        head = nn.Linear(enc.au_dim, len(meta["aus"]))
        head.load_state_dict({k[len("head."):]: v for k, v in st.items() if k.startswith("head.")})
        return AUPredictor(enc.eval(), head.eval(), meta)
    if encoder is None:
        raise ValueError(f"{path}: a linear head needs the encoder it was trained on")
    if int(meta["code_dim"]) != int(encoder.au_dim):
        raise ValueError(f"{path}: the head takes {meta['code_dim']}-d AU codes, the encoder gives {encoder.au_dim}-d")
    probe, meta = load_linear_head(folder)
    return AUPredictor(encoder, probe, meta)


def final_linear_head(codes: np.ndarray, data: LabelledFrames, cfg_eval, seed: int = 0) -> tuple[dict, dict]:
    """(tensors, meta) of a linear probe fitted on all of codes [N, D] / data.labels, with steps and
    thresholds chosen on validation subjects (select=validation) or the fixed defaults (none)."""
    p = cfg_eval.probe
    if select_mode(cfg_eval, data.dataset) == "validation" and len(np.unique(data.identity)) >= 2:
        sel = select_linear(codes, data, np.ones(len(codes), bool), cfg_eval, seed)
        steps, thr = sel["steps"], sel["thresholds"]
    else:
        steps, thr = int(p.steps), np.full(len(data.aus), 0.5)
    probe = fit_au_probe(codes, data.labels, steps, p.lr, p.weight_decay, p.batch_size, seed)
    tensors = {k.replace("0.", "bn.", 1) if k.startswith("0.") else k.replace("1.", "linear.", 1): v
               for k, v in probe.state_dict().items()}
    meta = {"protocol": "linear", "aus": list(data.aus), "thresholds": [float(t) for t in thr],
            "code_dim": int(codes.shape[1]), "steps": steps, "dataset": data.dataset, "frames": int(len(codes)),
            "subjects": list(data.identity_names)}
    return tensors, meta


def final_finetuned_head(encoder, data: LabelledFrames, cfg_eval, seed: int = 0) -> tuple[dict, dict]:
    """(tensors, meta) of the encoder + linear head fine-tuned on every frame (settings as in the evaluation)."""
    from . import finetune

    f = cfg_eval.finetune
    if select_mode(cfg_eval, data.dataset) == "validation" and len(np.unique(data.identity)) >= 2:
        sel = finetune.select_finetune(encoder, data, np.ones(len(data.labels), bool), cfg_eval, seed)
    else:
        sel = {"epochs": max(int(e) for e in f.epochs), "lr": float(f.lr[0]), "thresholds": np.full(len(data.aus), 0.5)}
    model = finetune.train(encoder, data.frames, data.labels, sel["epochs"], sel["lr"], float(f.weight_decay),
                           int(f.batch_size), seed)
    tensors = {f"head.{k}": v for k, v in model.head.state_dict().items()}
    tensors.update({f"encoder.{k}": v for k, v in model.encoder.state_dict().items()})
    meta = {"protocol": "finetune", "aus": list(data.aus), "thresholds": [float(t) for t in sel["thresholds"]],
            "code_dim": int(encoder.au_dim), "epochs": int(sel["epochs"]), "lr": float(sel["lr"]),
            "encoder_config": encoder.config, "dataset": data.dataset, "frames": int(len(data.labels)),
            "subjects": list(data.identity_names)}
    return tensors, meta


def open_linear_head(path: str | Path, code_dim: int) -> tuple[nn.Module, dict]:
    """`load_linear_head` for codes of size `code_dim`. Raises FileNotFoundError (no head.json) or ValueError
    (not a linear head, another code size), each naming `path`."""
    if not (Path(path) / "head.json").is_file():
        raise FileNotFoundError(f"{path}: no head.json (an AU head folder: <run>/au_head or aupretrain-eval --save-head)")
    probe, meta = load_linear_head(path)
    if int(meta["code_dim"]) != int(code_dim):
        raise ValueError(f"{path}: the head takes {meta['code_dim']}-d AU codes, the encoder gives {code_dim}-d")
    return probe, meta


def score_head(path: str | Path, codes: np.ndarray, data: LabelledFrames) -> dict:
    """F1 of a saved linear head applied as it is (no fitting) to codes [N, D] of every frame of `data`, at the
    head's own per-AU thresholds: the row `aupretrain-eval --head` adds (for the supervised bound, its own
    classifier fitted on the pretraining identities' labels, `<run>/au_head`).

    Raises:
        FileNotFoundError: `path` holds no head.json.
        ValueError: not a linear head, or a code size other than the encoder's.
        UsageError: AUs of `data` the head does not predict.
    """
    folder = Path(path)
    probe, meta = open_linear_head(folder, codes.shape[1])
    missing = [a for a in data.aus if a not in meta["aus"]]
    if missing:
        from ..errors import UsageError

        raise UsageError(f"--head {path}: the head predicts {meta['aus']}, not {missing} of {data.dataset}")
    cols = [list(meta["aus"]).index(a) for a in data.aus]
    probs = predict(probe, codes)[:, cols]
    thr = np.asarray(meta.get("thresholds", [0.5] * len(meta["aus"])), dtype=np.float64)[cols]
    return {**f1_summary(per_au_f1(data.labels, probs, thr), data), "head": str(folder),
            "head_source": meta.get("source", meta.get("dataset"))}
