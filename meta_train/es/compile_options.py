"""XLA compiler options shared by the engine's callers, the evaluation, the tests and benchmarks."""

from __future__ import annotations

# XLA:CPU spends most of the time of a short run (a test, a --quick benchmark, a small evaluation)
# compiling; backend optimisation level 0 compiles faster and runs the steps slower, so it pays
# only where the compiled program runs briefly.
FAST_COMPILE: dict[str, int] = {"xla_backend_optimization_level": 0}
