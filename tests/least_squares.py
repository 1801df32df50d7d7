"""A small least-squares problem trained with any optax transform, for the tests of the learned
rules' optax forms."""

import jax
import jax.numpy as jnp
import numpy as np
import optax


def train_losses(
    tx: optax.GradientTransformation, params: dict, seed: int, num_steps: int, offset: float
) -> np.ndarray:
    """Per-step losses of ``mean((x @ w + b - y)**2)`` trained from ``params`` ({"w", "b"}), with
    ``x`` standard normal (128 rows), ``y = x @ W* + offset`` drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    num_in, num_out = params["w"].shape
    x = jnp.asarray(rng.normal(size=(128, num_in)), jnp.float32)
    y = x @ jnp.asarray(rng.normal(size=(num_in, num_out)), jnp.float32) + offset

    def loss_fn(p):
        return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

    @jax.jit
    def run(params):
        def body(carry, _):
            params, state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, state = tx.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), loss

        return jax.lax.scan(body, (params, tx.init(params)), None, length=num_steps)[1]

    return np.asarray(run(params))
