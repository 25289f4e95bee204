"""CLP's within-clip HOG basis: the label-free directions in which a face's HOG descriptor changes inside a clip,
fitted from the training stream, and the whitened per-frame targets they give (`objective.cir.hog_basis_k`).

Why (docs/benchmarks.md, sessions 20-21): on the still-head synthetic corpus the top 8 principal directions of HOG
centred per video carry the AU probe (0.42 mean F1 on validation identities, HOG itself 0.36), and an encoder that
regresses each frame's HOG projected on them (whitened) learned more of it (0.41 alone) than one trained to explain
the full HOG change between two frames (0.34). This module is that target's pipeline form:

1. For `fit_steps` optimizer steps it accumulates, from every rank's clips (the engine gathers them and hands them
   to `CLPMethod.after_step`) — view 1 of the first training steps, or (`objective.cir.hog_basis_fit=prefit`)
   un-augmented clips read before step 1 (`engine.prefit`) — the pooled mean and second moment of the frames' HOG
   and the scatter of HOG centred on its own clip's mean (what changes while the face stays the same).
2. Then it fits once: the top `k` eigenvectors P [k, Dh] of the within-clip covariance (signs fixed so each
   vector's largest entry is positive, so every rank holds the same basis), and the pooled standard deviation
   sigma [k] of the frames' projections. The basis never changes again, so the head that reads it has a fixed
   target.
3. From then on `targets` gives every frame's whitened projection (P (h - mu)) / sigma [.., k]: unit variance over
   the frames, zero mean, in the directions where the clip's own change lies.

With `whiten` = r > 0 (`objective.cir.hog_basis_whiten`) step 2 keeps instead the k directions in which the
within-clip share of the variance is largest — the generalised eigenproblem S_w v = lambda S_t v of the within-clip
scatter S_w against the pooled covariance S_t, lambda in [0, 1] the fraction of v's variance that lies inside
clips — solved in the pooled HOG's top-r principal subspace, whitened (W = V_r diag(ev_r)^-1/2; then the top k
eigenvectors U of W^T S_w W, P = (W U)^T): the PCA-then-discriminant construction of Fisherfaces (Belhumeur,
Hespanha & Kriegman, TPAMI 1997; Fukunaga, "Introduction to Statistical Pattern Recognition", 1990, ch. 10) with
the within-class scatter maximised rather than minimised. A plain within-clip principal direction can also be one
in which faces differ a lot from each other (a face's edge pattern that also moves); relative to the pooled
variance, the kept directions are those where who the face is varies least. r regularises the 1,764-by-1,764
problem (the pooled covariance's small eigenvalues are noise that whitening would blow up). Measured label-free
(docs/benchmarks.md, session 35): on the still-head corpus the probe reads 0.464 mean F1 on validation identities
from 8 such directions at r = 64 (three fold seeds) against 0.412 for the plain ones, with half the identity; fitted
from the augmented views (HOG is not invariant to their rotation and crop), it did not raise the trained encoder on
the test identities; fitted on un-augmented clips see docs/benchmarks.md (session 36).

The fitted basis, mean and scale are buffers (saved with the model); the accumulators are not (a run resumed
before the fit restarts its accumulation).
"""
from __future__ import annotations

import torch
from torch import nn


class WithinClipHOGBasis(nn.Module):
    """See the module. Args: `dim` the HOG descriptor's length Dh, `k` directions kept (1 <= k < Dh),
    `fit_steps` optimizer steps of gathered clips accumulated before the fit (>= 1), `whiten` the rank r of the
    pooled subspace of the within-clip-share fit (0: plain within-clip principal directions; else k <= r <= Dh).

    Raises ValueError on k, fit_steps or whiten out of range, naming the config key."""

    def __init__(self, dim: int, k: int, fit_steps: int, whiten: int = 0):
        super().__init__()
        if not 1 <= k < dim:
            raise ValueError(f"objective.cir.hog_basis_k={k}: must be in 1..{dim - 1} (the HOG descriptor has {dim})")
        if fit_steps < 1:
            raise ValueError(f"objective.cir.hog_basis_fit_steps={fit_steps}: must be >= 1")
        if whiten and not k <= whiten <= dim:
            raise ValueError(f"objective.cir.hog_basis_whiten={whiten}: must be 0 (off) or in hog_basis_k..{dim} "
                             f"(k={k}; the HOG descriptor has {dim} values)")
        self.dim, self.k, self.fit_steps, self.whiten = int(dim), int(k), int(fit_steps), int(whiten)
        self.register_buffer("basis", torch.zeros(self.k, self.dim))
        self.register_buffer("mean", torch.zeros(self.dim))
        self.register_buffer("scale", torch.ones(self.k))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self._fitted = False  # the buffer's value on the host: read every step without a device sync
        self.register_load_state_dict_post_hook(lambda module, _keys: setattr(module, "_fitted", bool(module.fitted)))
        self._reset()

    def _reset(self) -> None:
        # float64 accumulators, plain attributes: never cast by DeepSpeed's bf16/fp16 modes, never checkpointed
        self._steps, self._frames, self._dof = 0, 0, 0
        self._sum = self._second = self._within = None

    @property
    def is_fitted(self) -> bool:
        """Whether the basis has been fitted (or loaded fitted): the host-side copy of the `fitted` buffer."""
        return self._fitted

    @torch.no_grad()
    def accumulate(self, hog: torch.Tensor) -> None:
        """Add one optimizer step's clips: hog [N, T, Dh] (T >= 2 frames of one face each; every rank's). Fits the
        basis once `fit_steps` steps were added; a no-op once fitted."""
        if self.is_fitted:
            return
        n, t, d = hog.shape
        if d != self.dim or t < 2:
            raise ValueError(f"WithinClipHOGBasis: expected clips [N, T >= 2, {self.dim}], got {tuple(hog.shape)}")
        h = hog.double().reshape(n * t, d)
        centred = (hog.double() - hog.double().mean(1, keepdim=True)).reshape(n * t, d)
        if self._sum is None:
            self._sum = torch.zeros(d, dtype=torch.float64, device=hog.device)
            self._second = torch.zeros(d, d, dtype=torch.float64, device=hog.device)
            self._within = torch.zeros(d, d, dtype=torch.float64, device=hog.device)
        self._sum += h.sum(0)
        self._second += h.T @ h
        self._within += centred.T @ centred
        self._frames += n * t
        self._dof += n * (t - 1)  # centring on the clip's mean takes one degree of freedom per clip
        self._steps += 1
        if self._steps >= self.fit_steps:
            self.fit()

    @torch.no_grad()
    def fit(self) -> None:
        """Fit P, mu and sigma from what was accumulated (see the module). Raises RuntimeError when fewer
        within-clip degrees of freedom than k were seen, or (with `whiten`) fewer frames than r + 1 or a pooled
        subspace of rank below r."""
        if self._dof < self.k:
            raise RuntimeError(f"WithinClipHOGBasis: {self._dof} within-clip degrees of freedom cannot fit "
                               f"{self.k} directions (raise objective.cir.hog_basis_fit_steps)")
        if self.whiten >= self._frames:
            raise RuntimeError(f"WithinClipHOGBasis: {self._frames} frames cannot whiten a {self.whiten}-dimensional "
                               f"subspace (raise objective.cir.hog_basis_fit_steps or lower hog_basis_whiten)")
        mean = self._sum / self._frames
        covariance = self._second / self._frames - torch.outer(mean, mean)
        within = self._within / self._dof
        if self.whiten:
            values, vectors = torch.linalg.eigh(covariance)  # ascending
            values, vectors = values[-self.whiten:], vectors[:, -self.whiten:]
            if values[0] <= 1e-10 * values[-1].clamp_min(1e-30):
                raise RuntimeError(f"WithinClipHOGBasis: the pooled HOG has rank below "
                                   f"objective.cir.hog_basis_whiten={self.whiten} (lower it)")
            w = vectors / values.sqrt()  # [Dh, r]: whitens the pooled top-r subspace
            _, u = torch.linalg.eigh(w.T @ within @ w)  # ascending within-clip share
            p = (w @ u[:, -self.k:].flip(1)).T  # [k, Dh], largest share first
            p = p / p.norm(dim=1, keepdim=True)
        else:
            _, vectors = torch.linalg.eigh(within)  # ascending eigenvalues
            p = vectors[:, -self.k:].flip(1).T  # [k, Dh], largest first
        rows = torch.arange(self.k, device=p.device)
        p = p * torch.sign(p[rows, p.abs().argmax(1)]).unsqueeze(1)  # the largest entry positive: one basis on all ranks
        variance = ((p @ covariance) * p).sum(1).clamp_min(1e-12)
        self.basis.copy_(p.to(self.basis.dtype))
        self.mean.copy_(mean.to(self.mean.dtype))
        self.scale.copy_(variance.sqrt().to(self.scale.dtype))
        self.fitted.fill_(True)
        self._fitted = True
        self._reset()

    @torch.no_grad()
    def targets(self, hog: torch.Tensor) -> torch.Tensor:
        """hog [..., Dh] -> whitened projections float32 [..., k]. Raises RuntimeError before the fit."""
        if not self.is_fitted:
            raise RuntimeError("WithinClipHOGBasis.targets before the basis was fitted")
        return ((hog.float() - self.mean.float()) @ self.basis.float().T) / self.scale.float()


__all__ = ["WithinClipHOGBasis"]
