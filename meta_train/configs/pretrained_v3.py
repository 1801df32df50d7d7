"""normalized-v3's recipe: normalized-v2's, continued from v2's theta, with the training loss mixed
back into the meta-loss.

normalized-v2 (outer-valid meta-loss only) traded training loss for test loss against tuned
AdamW, so the release gate kept v1 (``lopt/weights/normalized-v2/generalization.json``). What
changes from ``pretrained_v2``:

- the meta-loss is ``0.5 * outer-valid + 0.5 * training loss`` (``meta_loss_train_weight``), both
  relative to each problem's initial loss;
- ``digits_small`` weighs 0.25 in the combined estimate instead of 1: at v1's theta it held almost
  all of the estimate's variance (``benchmarks/results/es_signal_to_noise.json``);
- theta starts from ``normalized-v2`` (``init_from``), so this run's compute adds to v1's and v2's.

    lopt meta-train --config pretrained_v3 --workdir runs/pretrained_v3
"""

import ml_collections

from meta_train.configs import pretrained_v2


def get_config() -> ml_collections.ConfigDict:
    config = pretrained_v2.get_config()
    config.init_from = "normalized-v2"
    config.meta_loss_train_weight = 0.5
    config.groups.digits_small.weight = 0.25
    config.num_outer_steps = 3000
    return config
