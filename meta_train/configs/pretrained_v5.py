"""normalized-v5's recipe: normalized-v4's, continued from v4's theta for ten times as many
outer steps.

normalized-v4 (meta-loss 0.25 outer-valid + 0.75 training loss, 2000 outer steps from v3's theta)
became the default, but still misses issue 20's goals against tuned AdamW. Its meta-loss was still
falling when the run ended (0.265 -> 0.254), so this run asks what more compute alone buys: the same
recipe for 20000 outer steps (cosine outer schedule over the run), with a fresh seed so the sampled
tasks differ from v4's.

    lopt meta-train --config pretrained_v5 --workdir runs/pretrained_v5
"""

import ml_collections

from meta_train.configs import pretrained_v4


def get_config() -> ml_collections.ConfigDict:
    config = pretrained_v4.get_config()
    config.init_from = "normalized-v4"
    config.num_outer_steps = 20000
    config.seed = 5
    return config
