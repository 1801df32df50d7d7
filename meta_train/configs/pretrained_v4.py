"""normalized-v4's recipe: normalized-v3's, continued from v3's theta with more weight on the
training loss.

normalized-v3 (meta-loss 0.5 outer-valid + 0.5 training loss) lowered v2's training loss on the
generalization suite and kept about half of v2's test-loss wins, but its training-loss win rate
against tuned AdamW stayed under the release gate's floor (``lopt/weights/normalized-v3``). What
changes from ``pretrained_v3``: the training loss weighs 0.75 in the meta-loss, and theta starts
from ``normalized-v3``.

    lopt meta-train --config pretrained_v4 --workdir runs/pretrained_v4
"""

import ml_collections

from meta_train.configs import pretrained_v3


def get_config() -> ml_collections.ConfigDict:
    config = pretrained_v3.get_config()
    config.init_from = "normalized-v3"
    config.meta_loss_train_weight = 0.75
    config.num_outer_steps = 2000
    return config
