"""Linear probes on frozen codes: AU detection (BatchNorm1d + Linear, BCE with per-AU positive weights)
and identity classification (leakage: lower accuracy = more person-independent)."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score
from torch import nn


def _fit(x: np.ndarray, y: np.ndarray, loss_fn, out_dim: int, steps: int, lr: float, wd: float, bs: int, seed: int):
    """Minibatch AdamW with a cosine schedule for a fixed number of steps (independent of the set size)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    probe = nn.Sequential(nn.BatchNorm1d(x.shape[1]), nn.Linear(x.shape[1], out_dim))
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=wd)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
    bs = max(2, min(bs, len(xt)))
    for _ in range(steps):
        idx = torch.randint(len(xt), (bs,), generator=g)
        opt.zero_grad(set_to_none=True)
        loss_fn(probe(xt[idx]), yt[idx]).backward()
        opt.step()
        sched.step()
    return probe.eval()


def pos_weights(train_y: np.ndarray) -> torch.Tensor:
    """Per-AU BCE positive weight [A]: negatives / positives of the training labels, capped at 50."""
    pos = train_y.sum(0)
    return torch.as_tensor((len(train_y) - pos) / np.maximum(pos, 1.0), dtype=torch.float32).clamp(max=50)


def fit_au_probe(train_x, train_y, steps=500, lr=1e-2, weight_decay=1e-4, batch_size=256, seed=0) -> nn.Module:
    """The fitted probe (BatchNorm1d + Linear, eval mode): codes [N, D] -> AU logits [N, A]."""
    loss = nn.BCEWithLogitsLoss(pos_weight=pos_weights(train_y))
    return _fit(train_x, train_y.astype(np.float32), lambda o, t: loss(o, t.float()), train_y.shape[1], steps, lr,
                weight_decay, batch_size, seed)


def predict(probe: nn.Module, x) -> np.ndarray:
    """P(AU present) [N, A] of codes x [N, D]."""
    with torch.no_grad():
        return torch.sigmoid(probe(torch.as_tensor(x, dtype=torch.float32))).numpy()


def au_probe(train_x, train_y, test_x, steps=500, lr=1e-2, weight_decay=1e-4, batch_size=256, seed=0) -> np.ndarray:
    """Fit on (train_x [N, D], train_y {0,1} [N, A]) for `steps` AdamW steps; return P(AU present) [M, A]
    for test_x [M, D]."""
    return predict(fit_au_probe(train_x, train_y, steps, lr, weight_decay, batch_size, seed), test_x)


def identity_probe(train_x, train_id, test_x, test_id, steps=500, lr=1e-2, weight_decay=1e-4, batch_size=256,
                   seed=0) -> float:
    """Identity leakage of codes: fit a linear identity classifier (BatchNorm1d + Linear, cross-entropy over
    max(id) + 1 classes, `steps` AdamW steps with a cosine schedule) on (train_x [N, D], train_id [N] int) and return
    its top-1 accuracy (scikit-learn `accuracy_score`) on (test_x [M, D], test_id [M]), meant for identities present
    on both sides (`report.identity_split` holds out each one's later frames). Lower = a more person-independent
    code."""
    n = int(max(train_id.max(), test_id.max())) + 1
    ce = nn.CrossEntropyLoss()
    probe = _fit(train_x, train_id.astype(np.int64), lambda o, t: ce(o, t.long()), n, steps, lr, weight_decay,
                 batch_size, seed)
    with torch.no_grad():
        pred = probe(torch.as_tensor(test_x, dtype=torch.float32)).argmax(1).numpy()
    return float(accuracy_score(test_id, pred))


def subject_folds(identity: np.ndarray, k: int, seed: int = 0) -> list[np.ndarray]:
    """Split identities into k disjoint groups; returns a boolean test mask per fold."""
    ids = np.unique(identity)
    rng = np.random.default_rng(seed)
    rng.shuffle(ids)
    groups = np.array_split(ids, min(k, len(ids)))
    return [np.isin(identity, g) for g in groups]


def per_au_f1(labels: np.ndarray, probs: np.ndarray, threshold: float | np.ndarray = 0.5) -> np.ndarray:
    """F1 [A] of each AU (scikit-learn, 0 where an AU has no positive and no prediction): labels {0,1}
    [N, A], probs [N, A], threshold a number or one per AU [A]."""
    pred = (probs >= np.asarray(threshold, dtype=np.float64)).astype(int)
    return np.array([f1_score(labels[:, j].astype(int), pred[:, j], zero_division=0) for j in range(labels.shape[1])])


def best_thresholds(labels: np.ndarray, probs: np.ndarray, grid) -> tuple[np.ndarray, np.ndarray]:
    """Per AU, the threshold of `grid` with the highest F1 on (labels, probs) — to be called on a
    validation split only. Returns (thresholds [A], their F1 [A]); an AU without a positive keeps 0.5."""
    grid = np.asarray(list(grid), dtype=np.float64)
    y = labels[None] > 0  # [1, N, A]; F1 = 2 tp / (2 tp + fp + fn), 0 when nothing is positive (as per_au_f1)
    pred = probs[None] >= grid[:, None, None]  # [G, N, A]
    tp = (pred & y).sum(1)
    denom = pred.sum(1) + y.sum(1)
    f = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)  # [G, A]
    best = f.argmax(0)
    thr = grid[best]
    absent = labels.sum(0) == 0
    thr[absent] = 0.5
    return thr, f[best, np.arange(labels.shape[1])]
