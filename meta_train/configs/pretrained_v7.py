"""normalized-v7's recipe: normalized-v6's (orthogonalized directions), continued from v6's theta
with the meta-loss weighted toward held-out data, and theta averaged for export.

normalized-v6 trains far lower than v5 (training loss lower on 11 of 11 held-out tasks, paired by
seed) but its test loss lost to tuned AdamW on 7 of 12 tasks, so the release gate kept v5
(``lopt/weights/normalized-v6``). v2 -> v4 showed that the meta-loss's weights move the rule within
a few thousand outer steps: outer-valid only (v2) bought test-loss wins with training loss. The
orthogonalized rule has training loss to spare, so this run spends it. What changes from
``pretrained_v6``:
- the meta-loss is ``0.75 * outer-valid + 0.25 * training loss`` (v4-v6: the reverse);
- the outer learning rate is back to v4's 1e-3 peak (v6's 5e-4 left the meta-loss flat);
- the export is an exponential moving average of theta (``outer.average_decay``), so the shipped
  theta is not one step's draw of the outer noise.

    lopt meta-train --config pretrained_v7 --workdir runs/pretrained_v7
"""

import ml_collections

from meta_train.configs import pretrained_v6


def get_config() -> ml_collections.ConfigDict:
    config = pretrained_v6.get_config()
    config.init_from = "normalized-v6"
    config.meta_loss_train_weight = 0.25
    config.outer.learning_rate = 1e-3
    config.outer.average_decay = 0.999
    config.num_outer_steps = 6000
    config.seed = 7
    return config
