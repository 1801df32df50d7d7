"""normalized-v6's recipe: normalized-v5's, with orthogonalized directions for matrices, continued
from v5's theta at half the outer learning rate.

Of the rule options measured as ablations (``benchmarks/results/ablations/ablations.json``), only
``orthogonalize`` (Newton–Schulz directions, as Celo2 and Muon have them) moved the suite by more
than the noise: training loss 0.64 of tuned Adam's against 0.97 for the reference. v5's run also
showed that at v4's outer learning rate theta mostly random-walks (its meta-loss stayed within its
standard error over 20000 steps), so this run halves it; the cosine schedule still ends at zero.

    lopt meta-train --config pretrained_v6 --workdir runs/pretrained_v6
"""

import ml_collections

from meta_train.configs import pretrained_v5


def get_config() -> ml_collections.ConfigDict:
    config = pretrained_v5.get_config()
    config.init_from = "normalized-v5"
    config.optimizer.hyperparameters.orthogonalize = True
    config.outer.learning_rate = 5e-4
    config.num_outer_steps = 7000
    config.seed = 6
    return config
