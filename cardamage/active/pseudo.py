"""Self-training with confident pseudo-labels for the simulation's head (``<arm>+pseudo`` arms).

Each round of a pseudo-label arm trains twice: a **teacher** head on what the arm has labelled,
then a fresh **student** head on those labels plus pseudo-labels of unlabelled pool photos. A
pseudo-label keeps the teacher's class where its probability is at least
``simulate.pseudo_threshold`` and is :data:`~cardamage.data.reviewed.IGNORE_INDEX` elsewhere (and on
letterbox padding); the unreviewed pixels of photos an arm labelled by regions are filled the same
way. The number of pseudo-labelled photos ramps up: ``pseudo_ratio x labelled photos x
min(1, (round + 1) / pseudo_ramp_rounds)``, a seeded draw from the unlabelled pool.

The teacher predicts on clean cached features (the weak view); the student trains with the head's
dropout (the strong view). Image-level augmentation (colour, crops) is not possible on cached
frozen features: that part of FixMatch-style training is left to ``cardamage train``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from cardamage.data.reviewed import IGNORE_INDEX
from cardamage.model.self_training import confident_labels, draw_photos, ramp_value

if TYPE_CHECKING:
    from cardamage.config import Params
    from cardamage.model.frozen import FeatureBank, HeadEnsemble, HeadTrainer
    from cardamage.model.heads import Head

PSEUDO_SUFFIX = "+pseudo"


def is_pseudo_arm(arm: str) -> bool:
    """Whether ``arm`` trains with pseudo-labels (``<arm>+pseudo``)."""
    return arm.endswith(PSEUDO_SUFFIX)


def base_arm(arm: str) -> str:
    """The arm without the pseudo-label suffix (``entropy@region+pseudo`` -> ``entropy@region``)."""
    return arm[:-len(PSEUDO_SUFFIX)] if is_pseudo_arm(arm) else arm


def pseudo_masks(head: Head | HeadEnsemble, bank: FeatureBank, index: np.ndarray, threshold: float,
                 batch_size: int = 64) -> np.ndarray:
    """``uint8 [n, S, S]``: the head's class where its probability >= ``threshold``, else ignored (an
    ensemble: on the mean of its members' probabilities)."""
    from cardamage.model.frozen import head_probs

    out = np.empty((len(index),) + bank.masks.shape[1:], np.uint8)
    for start in range(0, len(index), batch_size):
        part = index[start:start + batch_size]
        probs = head_probs(head, bank.inputs(part))
        labels = confident_labels(probs, threshold)
        labels[bank.masks[part] == IGNORE_INDEX] = IGNORE_INDEX
        out[start:start + len(part)] = labels
    return out


def fit_with_pseudo(params: Params, trainer: HeadTrainer, bank: FeatureBank, index: np.ndarray,
                    masks: np.ndarray, seed: int, round_no: int) -> Head:
    """Teacher on ``(index, masks)``, then a student on those plus pseudo-labels (see the module docstring).

    With ``simulate.pseudo_generations`` G > 1 each student becomes the next teacher (noisy-student
    style): G students in all, the same pseudo-labelled photos every generation, the last one returned.
    """
    sim = params.simulate
    head = trainer.fit(bank, index, seed, masks)
    unknown = (masks == IGNORE_INDEX) & (bank.masks[index] != IGNORE_INDEX)
    rest = np.setdiff1d(np.arange(len(bank.paths)), index)
    ratio = sim.pseudo_ratio * ramp_value(round_no, sim.pseudo_ramp_rounds)
    chosen = np.asarray(draw_photos(rest, len(index), ratio, len(rest), seed), dtype=rest.dtype)
    for generation in range(sim.pseudo_generations):
        student = masks.copy()
        if unknown.any():  # photos labelled by regions: fill their unreviewed pixels
            student[unknown] = pseudo_masks(head, bank, index, sim.pseudo_threshold)[unknown]
        extra = pseudo_masks(head, bank, chosen, sim.pseudo_threshold)
        # the trainer reuses one model: the teacher's labels are taken above, before it is refitted
        head = trainer.fit(bank, np.concatenate([index, chosen]), seed + 1 + generation,
                           np.concatenate([student, extra]))
    return head
