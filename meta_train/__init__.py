"""Meta-training of learned optimizers: ``es/`` (the unrolled-ES library), ``evaluation/`` (held-out
evaluation), the trainer on top of both (``train``, ``outer``, ``checkpoint``, ``metrics``,
``chrono``, ``health``, ``config_flags``, ``configs/``, ``unrolled_tasks``, ``ship``, ``verdict``)
and ``cli`` (the ``lopt`` command)."""
