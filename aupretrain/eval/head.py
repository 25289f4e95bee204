"""`aupretrain-eval --save-head PATH`: one AU head trained on every labelled frame, kept for later use
(the file format: `aupretrain.models.head`).

PATH is a folder: `head.safetensors` (the probe's tensors: `bn.*` BatchNorm1d + `linear.*` Linear for the
linear protocol; `head.*` plus the fine-tuned `encoder.*` for `protocol=finetune`) and `head.json` (format,
protocol, AU names, per-AU thresholds, `aus_trained`, code dim, steps / epochs / lr, dataset and `encoder`: the
encoder it was fitted on — `encoder_record`: a fingerprint of its weights, code and input size, its path where the
caller gives it; a linear head has it when `final_linear_head` is given the encoder, a `finetune` head always, as the
encoder it was fine-tuned from). `load_head` refuses a linear head on any other
encoder (`check_encoder`); a head saved without that record (before it existed) loads with one warning that the
pairing cannot be checked. Settings are chosen as in the evaluation (validation subjects carved from all subjects when
`eval.select` is validation), then the head is refitted on every frame. An AU with no positive (or no negative)
frame in the data cannot be learnt: its column is kept (the AU list stays the dataset's) but left out of
`aus_trained`, and readers give no probability or decision for it (heads written before `aus_trained` existed:
every AU trained).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..models.head import FORMAT, load_linear_head, save_head
from .datasets import LabelledFrames
from .probe import fit_au_probe, per_au_f1, predict
from .report import f1_summary, select_linear, select_mode

__all__ = ["FORMAT", "AUPredictor", "check_encoder", "encoder_fingerprint", "encoder_record", "final_finetuned_head",
           "final_linear_head", "load_head", "load_linear_head", "open_linear_head", "save_head", "score_head",
           "trained_aus", "trained_mask"]

log = logging.getLogger(__name__)


def encoder_fingerprint(encoder) -> str:
    """`sha256:<16 hex digits>` of an encoder: every state-dict tensor (by name, shape, fp32 bytes) and the settings
    that shape its codes beside the weights (input size, normalisation mean / std). Equal for a run's encoder.pt and
    its export (both fp32), different for any other training or seed."""
    import hashlib

    h = hashlib.sha256()
    cfg = dict(getattr(encoder, "config", None) or {})
    h.update(json.dumps({k: cfg.get(k) for k in ("input_size", "mean", "std")}, sort_keys=True).encode())
    for name, t in sorted(encoder.state_dict().items()):
        t = t.detach().cpu()
        t = (t.float() if t.is_floating_point() else t).contiguous()
        h.update(f"{name}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return "sha256:" + h.hexdigest()[:16]


def encoder_record(encoder, source: str | Path | None = None) -> dict:
    """head.json's `encoder`: {"fingerprint": `encoder_fingerprint`, "au_dim", "input_size", "source" (the path the
    encoder was read from, when given: for messages only)}."""
    rec = {"fingerprint": encoder_fingerprint(encoder), "au_dim": int(encoder.au_dim),
           "input_size": int(dict(getattr(encoder, "config", None) or {}).get("input_size", 0))}
    return {**rec, "source": str(source)} if source is not None else rec


_unchecked: set[str] = set()  # heads without an encoder record already warned about (once per head and process)


def _beside(head: Path, source: str | Path | None) -> bool:
    """Whether the head folder sits in the run folder the encoder was read from (a supervised run's `au_head`)."""
    if source is None:
        return False
    src = Path(source)
    run = src if src.is_dir() else src.parent
    return head.resolve().parent == run.resolve()


def check_encoder(path: str | Path, meta: dict, encoder, source: str | Path | None = None) -> None:
    """Check that `encoder` (read from `source`, for the message) is the one the head at `path` (head.json `meta`)
    was fitted on: its `encoder` record's fingerprint (`encoder_record`). A head without that record (saved before
    it existed) cannot be checked: one warning per head, none for a head inside the encoder's own run folder
    (`<run>/au_head`).

    Raises:
        UsageError: another encoder (naming both, and how to fit a head for this one).
    """
    rec = meta.get("encoder")
    if not isinstance(rec, dict) or not rec.get("fingerprint"):
        key = str(Path(path).resolve())
        if key not in _unchecked and not _beside(Path(path), source):
            _unchecked.add(key)
            log.warning("%s: head.json does not record the encoder the head was fitted on (saved before heads kept "
                        "it): cannot check that it belongs to %s; its AU probabilities mean something only with that "
                        "encoder", path, source or "the given encoder")
        return
    got = encoder_fingerprint(encoder)
    if got != rec["fingerprint"]:
        from ..errors import UsageError

        fitted = f"{rec['source']} ({rec['fingerprint']})" if rec.get("source") else rec["fingerprint"]
        raise UsageError(f"{path}: the head was fitted on the codes of encoder {fitted}, not on {source or 'this one'} "
                         f"({got}): its AU probabilities would be meaningless; use the encoder it was fitted on, or "
                         f"fit one for this encoder: aupretrain-eval {source or 'ENCODER'} "
                         f"dataset={meta.get('dataset', 'NAME')} eval.root=DATA --save-head NEW_HEAD")


def trained_aus(data: LabelledFrames) -> list[str]:
    """The AUs of `data` a head fitted on all its frames can learn: those with at least one positive and one
    negative frame (an all-0 column gives a head that never fires for a reason, an all-1 one that always does).
    Logs one warning naming the others."""
    labels = np.asarray(data.labels)
    ok = labels.any(0) & ~labels.all(0)
    untrained = [a for a, k in zip(data.aus, ok) if not k]
    if untrained:
        log.warning("saved head (%s): no positive (or no negative) frame of %s: not trained, left out of head.json's "
                    "aus_trained (aupretrain-extract leaves those columns empty)", data.dataset, " / ".join(untrained))
    return [a for a, k in zip(data.aus, ok) if k]


def trained_mask(meta: dict) -> np.ndarray:
    """[A] bool: which of head.json's `aus` were trained (`aus_trained`; a head without it: all).

    Raises:
        ValueError: `aus_trained` is not a list of names among `aus`.
    """
    aus = list(meta["aus"])
    trained = meta.get("aus_trained", aus)
    if not isinstance(trained, list) or any(a not in aus for a in trained):
        raise ValueError(f"aus_trained={trained!r} must list names among aus={aus}")
    return np.array([a in trained for a in aus], dtype=bool)


class AUPredictor(nn.Module):
    """Aligned face frames -> per-AU probabilities: an encoder's AU code through a saved head.

    `forward(frames)`: RGB uint8 [N, H, W, 3] -> P(AU present) [N, A] (float32); `aus` names the columns and
    `thresholds` [A] are the per-AU decision thresholds chosen when the head was trained; `trained` [A] (bool)
    which AUs it learnt (`trained_mask`): the columns of the others are NaN, never a probability."""

    def __init__(self, encoder, head: nn.Module, meta: dict):
        super().__init__()
        self.encoder, self.head, self.meta = encoder, head, meta
        self.aus = list(meta["aus"])
        self.thresholds = np.asarray(meta.get("thresholds", [0.5] * len(self.aus)), dtype=np.float32)
        self.trained = trained_mask(meta)

    @property
    def untrained(self) -> list[str]:
        """The AUs the head was not trained for (their columns are NaN)."""
        return [a for a, ok in zip(self.aus, self.trained) if not ok]

    @torch.no_grad()
    def forward(self, frames: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """P(AU present) [N, A] (float32, AU order `self.aus`; NaN for an AU the head was not trained for) of
        aligned face crops `frames`, RGB uint8 [N, H, W, 3] (channels last, as decoded), encoded `batch_size` frames
        at a time by the encoder's `encode`; compare with `self.thresholds` [A] to decide (`decide`)."""
        codes = self.encoder.encode(frames, batch_size)
        p = torch.sigmoid(self.head(codes)).float()
        return p.masked_fill(~torch.from_numpy(self.trained).to(p.device), float("nan"))

    def decide(self, probs: torch.Tensor) -> torch.Tensor:
        """0/1 [N, A] (float32) of probabilities [N, A] from `forward` at the per-AU thresholds; NaN where they are
        NaN (an AU the head was not trained for: no decision)."""
        on = (probs >= torch.from_numpy(self.thresholds).to(probs.device)).float()
        return on.masked_fill(torch.isnan(probs), float("nan"))


def load_head(path: str | Path, encoder=None, source: str | Path | None = None) -> AUPredictor:
    """A head saved by `aupretrain-eval --save-head` as an `AUPredictor`.

    Linear heads sit on `encoder` (read from `source`, named in messages), which must be the one they were fitted
    on: the code size must match `code_dim` and the weights head.json's `encoder` fingerprint (`check_encoder`; a
    head without it loads with one warning). Fine-tuned heads carry their own encoder, so `encoder` is not used
    for them (the caller says so: `meta["encoder"]` is the encoder they were fine-tuned from, where recorded).

    Raises:
        FileNotFoundError: no head.json / head.safetensors in `path`.
        ValueError: not an aupretrain AU head, a linear head whose code size differs from the encoder's, or an
            `aus_trained` that is not a list of its AUs.
        UsageError (a ValueError): a linear head fitted on another encoder.
    """
    from safetensors.torch import load_file

    folder = Path(path)
    if not (folder / "head.json").is_file() or not (folder / "head.safetensors").is_file():
        raise FileNotFoundError(f"{path}: an AU head folder needs head.json and head.safetensors "
                                "(written by aupretrain-eval --save-head)")
    meta = json.loads((folder / "head.json").read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{folder / 'head.json'}: not an aupretrain AU head (format={meta.get('format')!r})")
    try:
        trained_mask(meta)
    except ValueError as e:
        raise ValueError(f"{folder / 'head.json'}: {e}") from None
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
    check_encoder(path, meta, encoder, source)
    probe, meta = load_linear_head(folder)
    return AUPredictor(encoder, probe, meta)


def final_linear_head(codes: np.ndarray, data: LabelledFrames, cfg_eval, seed: int = 0, encoder=None,
                      source: str | Path | None = None) -> tuple[dict, dict]:
    """(tensors, meta) of a linear probe fitted on all of codes [N, D] / data.labels, with steps and
    thresholds chosen on validation subjects (select=validation) or the fixed defaults (none); meta's
    `aus_trained` leaves out the AUs the data cannot teach (`trained_aus`), and its `encoder` records `encoder`
    (the one that gave `codes`, read from `source`: `encoder_record`) so the head is refused on any other."""
    p = cfg_eval.probe
    if select_mode(cfg_eval, data.dataset) == "validation" and len(np.unique(data.identity)) >= 2:
        sel = select_linear(codes, data, np.ones(len(codes), bool), cfg_eval, seed)
        steps, thr = sel["steps"], sel["thresholds"]
    else:
        steps, thr = int(p.steps), np.full(len(data.aus), 0.5)
    probe = fit_au_probe(codes, data.labels, steps, p.lr, p.weight_decay, p.batch_size, seed)
    tensors = {k.replace("0.", "bn.", 1) if k.startswith("0.") else k.replace("1.", "linear.", 1): v
               for k, v in probe.state_dict().items()}
    meta = {"protocol": "linear", "aus": list(data.aus), "aus_trained": trained_aus(data),
            "thresholds": [float(t) for t in thr],
            "code_dim": int(codes.shape[1]), "steps": steps, "dataset": data.dataset, "frames": int(len(codes)),
            "subjects": list(data.identity_names)}
    if encoder is not None:
        meta["encoder"] = encoder_record(encoder, source)
    return tensors, meta


def final_finetuned_head(encoder, data: LabelledFrames, cfg_eval, seed: int = 0,
                         source: str | Path | None = None) -> tuple[dict, dict]:
    """(tensors, meta) of the encoder + linear head fine-tuned on every frame (settings as in the evaluation); meta's
    `aus_trained` as in `final_linear_head`, its `encoder` the record of the encoder it was fine-tuned from."""
    from . import finetune

    base = encoder_record(encoder, source)  # before any training step

    f = cfg_eval.finetune
    if select_mode(cfg_eval, data.dataset) == "validation" and len(np.unique(data.identity)) >= 2:
        sel = finetune.select_finetune(encoder, data, np.ones(len(data.labels), bool), cfg_eval, seed)
    else:
        sel = {"epochs": max(int(e) for e in f.epochs), "lr": float(f.lr[0]), "thresholds": np.full(len(data.aus), 0.5)}
    model = finetune.train(encoder, data.frames, data.labels, sel["epochs"], sel["lr"], float(f.weight_decay),
                           int(f.batch_size), seed)
    tensors = {f"head.{k}": v for k, v in model.head.state_dict().items()}
    tensors.update({f"encoder.{k}": v for k, v in model.encoder.state_dict().items()})
    meta = {"protocol": "finetune", "aus": list(data.aus), "aus_trained": trained_aus(data),
            "thresholds": [float(t) for t in sel["thresholds"]],
            "code_dim": int(encoder.au_dim), "epochs": int(sel["epochs"]), "lr": float(sel["lr"]),
            "encoder_config": encoder.config, "dataset": data.dataset, "frames": int(len(data.labels)),
            "subjects": list(data.identity_names), "encoder": base}
    return tensors, meta


def open_linear_head(path: str | Path, code_dim: int, encoder=None,
                     source: str | Path | None = None) -> tuple[nn.Module, dict]:
    """`load_linear_head` for codes of size `code_dim`; with `encoder` (read from `source`) also `check_encoder`.
    Raises FileNotFoundError (no head.json) or ValueError (not a linear head, another code size; UsageError:
    fitted on another encoder), each naming `path`."""
    if not (Path(path) / "head.json").is_file():
        raise FileNotFoundError(f"{path}: no head.json (an AU head folder: <run>/au_head or aupretrain-eval --save-head)")
    probe, meta = load_linear_head(path)
    if int(meta["code_dim"]) != int(code_dim):
        raise ValueError(f"{path}: the head takes {meta['code_dim']}-d AU codes, the encoder gives {code_dim}-d")
    if encoder is not None:
        check_encoder(path, meta, encoder, source)
    return probe, meta


def score_head(path: str | Path, codes: np.ndarray, data: LabelledFrames) -> dict:
    """F1 of a saved linear head applied as it is (no fitting) to codes [N, D] of every frame of `data`, at the
    head's own per-AU thresholds: the row `aupretrain-eval --head` adds (for the supervised bound, its own
    classifier fitted on the pretraining identities' labels, `<run>/au_head`). An AU the head was not trained for
    (`aus_trained`) has no F1 (NaN, left out of `aus_evaluated` and the mean; one warning names it).

    Raises:
        FileNotFoundError: `path` holds no head.json.
        ValueError: not a linear head, a code size other than the encoder's, or a bad `aus_trained`.
        UsageError: AUs of `data` the head does not predict.
    """
    folder = Path(path)
    probe, meta = open_linear_head(folder, codes.shape[1])
    missing = [a for a in data.aus if a not in meta["aus"]]
    if missing:
        from ..errors import UsageError

        raise UsageError(f"--head {path}: the head predicts {meta['aus']}, not {missing} of {data.dataset}")
    cols = [list(meta["aus"]).index(a) for a in data.aus]
    try:
        trained = trained_mask(meta)[cols]
    except ValueError as e:
        raise ValueError(f"{folder / 'head.json'}: {e}") from None
    probs = predict(probe, codes)[:, cols]
    thr = np.asarray(meta.get("thresholds", [0.5] * len(meta["aus"])), dtype=np.float64)[cols]
    out = f1_summary(np.where(trained, per_au_f1(data.labels, probs, thr), np.nan), data)
    untrained = [a for a, ok in zip(data.aus, trained) if not ok]
    if untrained:
        log.warning("--head %s: the head was not trained for %s: no F1 for %s", path, " / ".join(untrained),
                    "it" if len(untrained) == 1 else "them")
        out["aus_evaluated"] = [a for a in out["aus_evaluated"] if a not in untrained]
        scored = [out["f1"][a] for a in out["aus_evaluated"]]
        if not scored:
            from ..errors import UsageError

            raise UsageError(f"--head {path}: the head was trained for none of the AUs with a positive frame here "
                             f"({', '.join(untrained)} untrained): nothing to score")
        out["f1_mean"] = float(np.mean(scored))
        out["aus_untrained"] = untrained
    return {**out, "head": str(folder), "head_source": meta.get("source", meta.get("dataset"))}
