"""Take a folded decision threshold back out of a model file and re-score it into its card.

Used once, on roads-unet-r18-v2, whose road threshold (0.051) had been chosen on tile
10678810_15, the tile its scores are quoted for:

    GEOSEG_SHARED_DATA=../shared/data .venv/bin/python tools/unfold_threshold.py \
        geoseg/models/weights/roads-unet-r18-v2.safetensors /tmp/roads-unet-r18-v2.safetensors \
        workflows/train/roads-v2.yaml

The weights change only in the class's last-layer bias (``+= logit(t)``, undoing
``geoseg.training.threshold.fold_threshold``); the card keeps the removed choice under
``training.threshold_removed`` and gets new ``evaluation`` and ``scores`` (the training
recipe's held-out data, through the real pipeline).
"""

import math
import sys
from dataclasses import replace

from safetensors.torch import load_file

from geoseg.cli.training import _evaluate_outputs
from geoseg.models.card import read_card
from geoseg.models.registry import save_model
from geoseg.run.evaluate import evaluate as run_evaluation
from geoseg.training.config_file import read_train_file
from geoseg.training.scoring import score_held_out, score_outputs_into_card
from geoseg.training.threshold import head_bias_key

src, out, recipe = sys.argv[1], sys.argv[2], sys.argv[3]
card = read_card(src)
state = load_file(src)
chosen = card.training["threshold"]
t = chosen["threshold"]
key = head_bias_key(state, card.network_outputs)
bias = state[key].clone()
ch = card.class_index(chosen["class"])
bias[ch] = (bias[ch].float() + math.log(t / (1 - t))).to(bias.dtype)  # undo -logit(t)
state[key] = bias
training = {
    k: v for k, v in card.training.items() if k not in ("threshold", "evaluation", "scores")
}
training["threshold_removed"] = {
    **chosen,
    "why": (
        "the threshold had been chosen on the held-out data the model's scores are quoted "
        "for; it was taken out of the last layer's bias again (bias += logit(t)), so the "
        "model predicts at the argmax (p >= 0.5)"
    ),
    "how": "tools/unfold_threshold.py",
}
save_model(out, replace(card, training=training), state)
config = read_train_file(recipe, overrides={"output": out})
score_held_out(out, config, evaluate=run_evaluation, progress=print)
score_outputs_into_card(out, config, evaluate_outputs=_evaluate_outputs, progress=print)
