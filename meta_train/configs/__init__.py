"""Meta-training configs (``ml_collections``): ``lopt meta-train --config <name>`` picks one."""
