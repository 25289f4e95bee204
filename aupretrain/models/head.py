"""The AU head file format: a folder with `head.safetensors` and `head.json` (`aupretrain-au-head/1`).

A *linear* head maps AU codes [N, D] to AU logits [N, A] through BatchNorm1d(D) then Linear(D, A); its tensors
are `bn.*` and `linear.*` (the state dict of that `nn.Sequential`, renamed). A *fine-tuned* head carries
`head.*` (Linear) and its own `encoder.*`. `head.json` holds the format, the protocol (`linear` | `finetune`),
the AU names, per-AU decision thresholds, the code size and where the head came from.

Heads are written by `aupretrain-eval --save-head` (a probe fitted on labelled frames) and by training runs of
the supervised bound (`<run>/au_head`: the objective's own classifier, fitted on the pretraining labels); they
are read by `aupretrain-extract --head` and `aupretrain-eval --head`.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

FORMAT = "aupretrain-au-head/1"


def save_head(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Write `<path>/head.safetensors` (fp32) and `<path>/head.json` (`{"format": FORMAT, **meta}`); returns
    the folder. Raises OSError when the folder cannot be written."""
    from safetensors.torch import save_file

    from .encoder import fp32_tensors

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    save_file(fp32_tensors(tensors), str(out / "head.safetensors"))
    (out / "head.json").write_text(json.dumps({"format": FORMAT, **meta}, indent=1))
    return out


def linear_head_tensors(linear: nn.Linear) -> dict[str, torch.Tensor]:
    """A trained `Linear(D, A)` on raw AU codes as a linear head's tensors: the head's BatchNorm1d is made the
    identity (running mean 0, running variance 1 − eps, so (x − 0) / sqrt(1 − eps + eps) = x; weight 1, bias 0),
    so `bn → linear` computes exactly `linear(x)`."""
    d = linear.in_features
    bn = nn.BatchNorm1d(d)
    w = linear.weight.detach().float().cpu()
    return {"bn.weight": torch.ones(d), "bn.bias": torch.zeros(d), "bn.running_mean": torch.zeros(d),
            "bn.running_var": torch.full((d,), 1.0 - bn.eps), "bn.num_batches_tracked": torch.tensor(0),
            "linear.weight": w, "linear.bias": linear.bias.detach().float().cpu()}


def load_linear_head(path: str | Path) -> tuple[nn.Module, dict]:
    """(BatchNorm1d + Linear in eval mode: codes [N, D] -> AU logits [N, A], head.json contents).

    Raises:
        ValueError: not a linear aupretrain AU head, or tensors that do not fit head.json's sizes.
    """
    from safetensors.torch import load_file

    meta = json.loads((Path(path) / "head.json").read_text())
    if meta.get("format") != FORMAT or meta.get("protocol") != "linear":
        raise ValueError(f"{path}: not a linear aupretrain AU head ({meta.get('format')}, {meta.get('protocol')})")
    d, a = int(meta["code_dim"]), len(meta["aus"])
    probe = nn.Sequential(nn.BatchNorm1d(d), nn.Linear(d, a))
    st = load_file(str(Path(path) / "head.safetensors"))
    try:
        probe.load_state_dict({k.replace("bn.", "0.").replace("linear.", "1."): v for k, v in st.items()})
    except RuntimeError as e:  # tensors that do not fit head.json's sizes
        raise ValueError(f"{path}: head.safetensors does not match head.json ({str(e).splitlines()[-1].strip()})") from None
    return probe.eval(), meta
