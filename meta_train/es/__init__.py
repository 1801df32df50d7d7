"""Unrolled evolution strategies: the ``UnrolledSystem`` seam, the particle engine and its table of
noise rules (ES-Single, PES, truncated ES, full ES, GPES, TBPTT). Imports nothing from ``lopt``,
``tasks`` or the rest of ``meta_train``: any pure, vmappable system can be meta-trained with it."""
