"""Choosing a class's decision threshold on held-out data and folding it into the network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geoseg.errors import ConfigError
from geoseg.training.threshold import choose_threshold, fold_threshold, threshold_counts


def test_the_threshold_with_the_best_iou_is_chosen():
    # Roads the network is unsure of: labelled pixels at p = 0.3, others at p = 0.1 and
    # a few at 0.6. The argmax (p >= 0.5) finds no road; 0.3 finds them all.
    prob = np.full((10, 10), round(0.1 * 254), dtype=np.uint8)
    truth = np.zeros((10, 10), dtype=bool)
    truth[4:6] = True
    prob[truth] = round(0.3 * 254)
    prob[0, :3] = round(0.6 * 254)
    scored = np.ones((10, 10), dtype=bool)
    scored[9] = False  # unlabelled: not counted
    pos, neg = threshold_counts(prob, truth, scored=scored)
    assert pos.sum() == 20 and neg.sum() == 70
    choice = choose_threshold(pos, neg)
    assert choice.threshold == pytest.approx(0.3, abs=1 / 254)
    assert choice.iou == pytest.approx(20 / 23) and choice.recall == 1.0
    assert choice.argmax_iou == 0 and choice.argmax_recall == 0
    with pytest.raises(ConfigError, match="no held-out pixel"):
        choose_threshold(np.zeros(255, np.int64), neg)


def test_a_folded_threshold_makes_the_argmax_threshold_the_probability():
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(0, 2, size=(2, 1000)).astype(np.float32))
    state = {"segmentation_head.0.bias": torch.tensor([0.2, -0.1])}
    for t in (0.2, 0.35, 0.7):
        folded = fold_threshold(state, channel=1, n_outputs=2, threshold=t)
        delta = folded["segmentation_head.0.bias"] - state["segmentation_head.0.bias"]
        p_road = torch.softmax(logits, dim=0)[1]
        shifted = logits + delta[:, None]
        np.testing.assert_array_equal(
            (shifted.argmax(dim=0) == 1).numpy(), (p_road >= t).numpy() & (p_road != t).numpy()
        )
    assert torch.equal(state["segmentation_head.0.bias"], torch.tensor([0.2, -0.1]))  # a copy
    with pytest.raises(ConfigError, match="two-class"):
        fold_threshold(state, channel=1, n_outputs=3, threshold=0.3)
    with pytest.raises(ConfigError, match="segmentation head"):
        fold_threshold({"head.bias": torch.zeros(2)}, channel=1, n_outputs=2, threshold=0.3)
