"""40 Adam steps on a family's held-out task, for the new families' smoke tests."""

import functools

import jax
import optax

from meta_train.es.compile_options import FAST_COMPILE
from tasks import registry


@functools.partial(jax.jit, static_argnums=(2,), compiler_options=FAST_COMPILE)
def adam_run(family, key: jax.Array, eval_split: str):
    """``(losses [40], eval loss of the initial params on eval_split, test metrics after)``."""
    task = family.task(registry.held_out_config(family, 0))
    params = task.init(key)
    adam = optax.adam(1e-2)

    def step(carry, step_key):
        p, state = carry
        loss, grads = jax.value_and_grad(task.loss)(p, step_key)
        updates, state = adam.update(grads, state, p)
        return (optax.apply_updates(p, updates), state), loss

    (trained, _), losses = jax.lax.scan(
        step, (params, adam.init(params)), jax.random.split(key, 40)
    )
    return losses, task.eval_loss(params, key, eval_split), task.evaluate(trained, "test")
