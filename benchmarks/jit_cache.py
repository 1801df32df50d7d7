"""What a jit-wrapper cache would buy the engine: ``functools.cache`` over ``engine._jit`` (one
``jax.jit`` wrapper per set of XLA compiler options, as the engine once had) against plain
``jax.jit``, a fresh wrapper per call (what the engine does), which leaves the caching to jax (its
trace and compile caches key on the function, the static arguments and the argument shapes).

``init_particles`` is the engine's one self-jitted entry point. For each variant, in one process
and in alternating order, ``--repeats`` times: all jax caches cleared, then the first call
(trace + compile + run) and the median of ``--calls`` further identical calls (steady state).
The machine is noisy: read the ratios between the variants of the same repeat.

    python -m benchmarks.jit_cache [--out PATH | --record]

writes ``jit_cache.json`` to a scratch folder, ``--out`` or, with ``--record``,
``benchmarks/results/`` (``benchmarks/output.py``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
from unittest import mock

import jax
import jax.numpy as jnp

from benchmarks import output
from benchmarks.provenance import provenance
from meta_train.es import engine, reference_systems

VARIANTS = {
    "cached_wrapper": lambda: functools.cache(engine._jit),
    "plain_jax_jit": lambda: engine._jit,  # a new jax.jit wrapper every call
}


def time_variant(variant: str, system, config, theta, calls: int) -> dict[str, float]:
    jax.clear_caches()
    run = lambda: jax.block_until_ready(
        engine.init_particles(system, config, theta, jax.random.key(0))
    )
    with mock.patch.object(engine, "_jit", VARIANTS[variant]()):
        start = time.perf_counter()
        run()
        first = time.perf_counter() - start
        steady = []
        for _ in range(calls):
            start = time.perf_counter()
            run()
            steady.append(time.perf_counter() - start)
    return {"first_call_s": first, "steady_call_s": statistics.median(steady)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--calls", type=int, default=50)
    output.add_arguments(parser)
    args = parser.parse_args(argv)
    path = output.resolve(args, "jit_cache.json")
    run_provenance = provenance(["benchmarks/jit_cache.py", *(argv or sys.argv[1:])])

    system = reference_systems.LinearQuadraticSystem.create(jax.random.key(0), 4, 3)
    theta = {"a": jnp.zeros(2), "b": jnp.zeros(1)}
    config = engine.EngineConfig(num_pairs=8, window=4, sigma=0.1, horizon=(8, 32))
    rows = []
    for repeat in range(args.repeats):
        order = list(VARIANTS) if repeat % 2 == 0 else list(reversed(VARIANTS))
        times = {name: time_variant(name, system, config, theta, args.calls) for name in order}
        base = times["cached_wrapper"]
        row = {"repeat": repeat, "order": order, **times}
        for key in ("first_call_s", "steady_call_s"):
            row[f"plain_over_cached_{key}"] = times["plain_jax_jit"][key] / base[key]
        rows.append(row)
        print(
            f"repeat {repeat}: first call cached {base['first_call_s']:.3f}s "
            f"plain {times['plain_jax_jit']['first_call_s']:.3f}s "
            f"(ratio {row['plain_over_cached_first_call_s']:.2f}); steady cached "
            f"{base['steady_call_s'] * 1e3:.3f}ms plain "
            f"{times['plain_jax_jit']['steady_call_s'] * 1e3:.3f}ms "
            f"(ratio {row['plain_over_cached_steady_call_s']:.2f})",
            flush=True,
        )
    result = {
        "provenance": run_provenance,
        "setting": {"system": "LinearQuadraticSystem(4, 3)", "config": repr(config)},
        "rows": rows,
        "load_average_after": list(os.getloadavg()),
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
