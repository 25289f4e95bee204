"""Subject-exclusive folds: the literature's standard 3-fold lists for BP4D and DISFA, a seeded split
otherwise, and the validation subjects carved from the training folds.

Standard lists (the same subject partitions as JAA-Net, Shao et al. ECCV 2018, which ME-GraphAU, Luo et al.
IJCAI 2022, and most later BP4D / DISFA AU detection papers reuse), copied from the ME-GraphAU repository
(github.com/CVI-SZU/ME-GraphAU):
  BP4D:  tool/BP4D_image_label_process.py, `BP4D_Sequence_split` (41 subjects: 14 + 14 + 13)
  DISFA: tool/DISFA_image_label_process.py, `part1`, `part2`, `part3` (27 subjects: 9 + 9 + 9)
Fold numbering follows that file: fold 1 tests part 3, fold 2 tests part 2, fold 3 tests part 1.
"""
from __future__ import annotations

import logging

import numpy as np

from .probe import subject_folds as seeded_folds  # the synthetic protocol's seeded split

log = logging.getLogger(__name__)

STANDARD_PARTS = {
    "bp4d": [
        ["F001", "M007", "F018", "F008", "F002", "M004", "F010", "F009", "M012", "M001", "F016", "M014", "F023", "M008"],
        ["M011", "F003", "M010", "M002", "F005", "F022", "M018", "M017", "F013", "M016", "F020", "F011", "M013", "M005"],
        ["F007", "F015", "F006", "F019", "M006", "M009", "F012", "M003", "F004", "F021", "F017", "M015", "F014"],
    ],
    "disfa": [
        ["SN002", "SN010", "SN001", "SN026", "SN027", "SN032", "SN030", "SN009", "SN016"],
        ["SN013", "SN018", "SN011", "SN028", "SN012", "SN006", "SN031", "SN021", "SN024"],
        ["SN003", "SN029", "SN023", "SN025", "SN008", "SN005", "SN007", "SN017", "SN004"],
    ],
}
STANDARD_SOURCE = {
    "bp4d": "github.com/CVI-SZU/ME-GraphAU tool/BP4D_image_label_process.py (JAA-Net 3-fold subject lists)",
    "disfa": "github.com/CVI-SZU/ME-GraphAU tool/DISFA_image_label_process.py (JAA-Net 3-fold subject lists)",
}


def check_disjoint(masks: list[np.ndarray], subjects: np.ndarray) -> None:
    """AssertionError if two test folds share a frame or a subject."""
    seen: set = set()
    for k, m in enumerate(masks):
        s = set(np.asarray(subjects)[m].tolist())
        assert not s & seen, f"fold {k + 1} shares subjects {sorted(s & seen)} with an earlier fold"
        seen |= s
    assert not (np.sum(masks, axis=0) > 1).any(), "a frame is in two test folds"


def standard_folds(dataset: str, subjects: np.ndarray, k: int = 3, seed: int = 0) -> tuple[list[np.ndarray], str]:
    """Test masks [N] bool per fold from the subject of each frame (`subjects` [N] str) and where they came
    from. BP4D / DISFA whose subjects all appear in the standard lists (a subset is fine as long as every
    part keeps a subject): the standard 3 folds. Otherwise (GFT, synthetic, unknown subject names, or a
    part left empty) a seeded split into `k` folds, logged as such. Folds never share a subject (asserted).
    """
    subjects = np.asarray(subjects)
    present = set(subjects.tolist())
    parts = STANDARD_PARTS.get(dataset)
    if parts is not None:
        known = set().union(*map(set, parts))
        if present <= known and all(present & set(p) for p in parts):
            masks = [np.isin(subjects, parts[j]) for j in (2, 1, 0)]
            check_disjoint(masks, subjects)
            return masks, STANDARD_SOURCE[dataset]
        why = (f"subjects not in the standard lists: {sorted(present - known)[:5]}" if not present <= known
               else "a standard part has none of these subjects")
        log.warning("%s: standard 3-fold split not usable (%s); using a seeded subject split (seed %d) instead",
                    dataset, why, seed)
    _, inv = np.unique(subjects, return_inverse=True)
    masks = seeded_folds(inv, k, seed)
    check_disjoint(masks, subjects)
    return masks, f"seeded subject split into {len(masks)} folds (seed {seed})"


def validation_subjects(identity: np.ndarray, train: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Carve a validation set from the training frames by subject: a boolean mask [N] (a subset of `train`)
    holding round(fraction x #training subjects) subjects (at least 1, and at least 1 left to train on),
    chosen with `seed`. Raises ValueError with fewer than 2 training subjects."""
    ids = np.unique(identity[train])
    if len(ids) < 2:
        raise ValueError(f"selection on validation needs >= 2 training subjects, got {len(ids)}")
    n = min(max(1, int(round(fraction * len(ids)))), len(ids) - 1)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(ids, n, replace=False)
    return train & np.isin(identity, chosen)
