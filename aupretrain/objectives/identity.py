"""Two terms against identity in the AU code (ours): the identity-confusion term and the between-clip share.

**The identity-confusion term** (docs/method.md "The identity-confusion term"): the AU code is trained so that
a linear identity classifier, trained beside it on the same codes, cannot tell apart the identities of the batch.

The confusion loss of Alvi et al., "Turning a Blind Eye: Explicit Removal of Biases and Variation from Deep Neural
Network Embeddings" (ECCV Workshops 2018), in place of a gradient-reversal layer (Ganin & Lempitsky, ICML 2015): the
classifier minimises its cross-entropy on the codes, detached; the encoder minimises the divergence of the frozen
classifier's prediction from the uniform distribution, so its loss is bounded and is 0 when the classifier is
blind. Here the uniform distribution is over the identities present in the rank's batch (the softmax restricted
to them): the pretraining set's identity count is not a setting, and the code only has to hide who of the faces
in front of it is who. Measured and not adopted (docs/benchmarks.md, session 41): the classifier is blinded, but a
probe fitted afresh on the frozen code reads as much identity or more — the encoder evades an adversary trained
online rather than dropping what it evades.

**The between-clip share** (docs/method.md "The between-clip share term"): no classifier to evade. A clip shows one
face, so what its frames' codes share — the clip's mean — carries the identity, and what changes within the clip
carries the AUs that changed. The term is the share of each code dimension's variance over the batch's frames that
lies between the clips' means (the one-way ANOVA decomposition, total = between + within), averaged over dimensions:
every dimension is read as the evaluation's probe reads it, standardised, so identity cannot hide in a dimension
of small variance. It needs no identity labels.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import zero_like


def identity_confusion_terms(adv: dict[str, torch.Tensor], identity: torch.Tensor) -> dict[str, torch.Tensor]:
    """The identity classifier's and the encoder's terms.

    adv: the method's pass (`methods.clp.identity_adversary_pass`): `head` [N, T, K], the classifier's logits on
    the detached codes (trains the classifier only), and `code` [N, T, K], the codes through the classifier with its
    weights detached (trains the encoder only); N = V·B for V views of B clips, view after view.
    identity: [B] integer identity of each clip (the loader's index into the manifest's identities; -1 for one it
    does not list: such clips take no part). Class of a clip: identity mod K.

    Returns {"id_adv_ce": cross-entropy of `head` (nats, mean over frames), "id_adv_confusion": mean over frames of
    KL(U || softmax of `code` restricted to the batch's classes) = −log|P| − mean_c∈P log p_c (nats; 0 when the
    classifier cannot tell them apart; 0 with fewer than two classes in the batch), "id_adv_acc": the classifier's
    top-1 accuracy over all K classes (a fraction, logged, no gradient)}. Both losses are on the graph (zero when
    no clip has an identity). Raises ValueError when N is not a multiple of B."""
    head, code = adv["head"].float(), adv["code"].float()
    n, t, k = head.shape
    b = identity.numel()
    if b == 0 or n % b:
        raise ValueError(f"identity_confusion_terms: {n} coded clips are not a whole number of views of {b} clips")
    ids = identity.to(head.device).long().repeat(n // b)  # [N], view after view
    known = ids >= 0
    if not bool(known.any()):
        return {"id_adv_ce": zero_like(head), "id_adv_confusion": zero_like(code),
                "id_adv_acc": torch.zeros((), device=head.device)}
    y = (ids[known] % k)[:, None].expand(-1, t).reshape(-1)  # [M·T]
    h = head[known].reshape(-1, k)
    ce = F.cross_entropy(h, y)
    acc = (h.detach().argmax(-1) == y).float().mean()
    present = torch.unique(y)
    if present.numel() < 2:
        confusion = zero_like(code)
    else:
        logp = F.log_softmax(code[known][..., present], dim=-1)  # [M, T, |P|]
        confusion = -math.log(present.numel()) - logp.mean(-1).mean()
    return {"id_adv_ce": ce, "id_adv_confusion": confusion, "id_adv_acc": acc}


def between_clip_share(code: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The between-clip share of the code's variance (a scalar in [0, 1], on the graph).

    code: [N, T, D] the codes of N clips (or views of clips) of T >= 2 frames each. For each dimension d, with m_n
    the clip means over frames and var the population variance over N·T frames (or N clip means):
    share_d = var_n(m_n,d) / (var_n,t(code_n,t,d) + eps · mean_d var_n,t(code_n,t,d)); returns mean_d share_d. The
    total variance is the between-clip plus the within-clip variance (one-way ANOVA), so share_d is 1 when the
    dimension is constant within each clip and 0 when every clip has the same mean. Scale-free per dimension (it
    cannot be lowered by shrinking the code), except that a dimension of variance far below eps x the mean variance
    (a dead one) reads about 0. Raises ValueError for T < 2 or N < 2 (no within- or between-clip
    variance to compare)."""
    n, t, _ = code.shape
    if t < 2 or n < 2:
        raise ValueError(f"between_clip_share needs >= 2 clips of >= 2 frames each, got {n} clips of {t} frames")
    x = code.float()
    total = x.flatten(0, 1).var(0, unbiased=False)  # [D]
    between = x.mean(1).var(0, unbiased=False)  # [D]
    return (between / (total + eps * total.mean().detach() + 1e-12)).mean()


__all__ = ["between_clip_share", "identity_confusion_terms"]
