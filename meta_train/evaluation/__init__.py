"""Held-out evaluation of optimizers: the shared inner-training step, per-task learning-rate
tuning of the baselines, frozen reports and their renderings, aggregates over tasks. Built on
``lopt``, ``tasks`` and ``meta_train.es``; the trainer imports it, never the other way round."""
