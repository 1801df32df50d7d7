"""A small causal transformer language model on the token streams of ``tasks.language``.

The network (pre-LayerNorm, GPT-2 style) on int ``tokens [batch, T]``::

    h = E[tokens] + P[:T]                                  token and learned position embeddings
    h = h + Attn_k(LN_k1(h));  h = h + MLP_k(LN_k2(h))     k = 0 .. num_blocks - 1
    logits = LN(h) W_out + b_out                           [batch, T, vocab]

``Attn`` is multi-head causal self-attention (``softmax(q k^T / sqrt(d_head))`` with position
``t`` attending to positions ``<= t``), ``MLP`` is ``gelu(x W_1 + b_1) W_2 + b_2`` with hidden
width ``4 * width``, and ``LN`` is ``tasks.residual.layer_norm`` (learned scale and bias).

Data, minibatches, losses and metrics are the recurrent LMs' (``tasks.language.LMTask`` on a
``TextData``: the synthetic Markov language or a prepared TFDS text), so the two model classes are
compared on the same problems; the dynamic configuration is ``tasks.language.LMConfig``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

from tasks.base import Params
from tasks.image import standard_normals
from tasks.language import LMConfig, LMFamily, TextData, text_for_windows
from tasks.residual import layer_norm, layer_norm_params

MLP_EXPANSION = 4


def causal_self_attention(params: Params, x: jax.Array, num_heads: int) -> jax.Array:
    """Multi-head causal self-attention: ``x [batch, T, width]`` -> ``[batch, T, width]``.

    ``params``: ``{"qkv": {"w": [width, 3 width], "b": [3 width]}, "out": {"w": [width, width],
    "b": [width]}}``. Position ``t`` attends to positions ``0 .. t`` only.
    """
    batch, length, width = x.shape
    head = width // num_heads
    qkv = x @ params["qkv"]["w"] + params["qkv"]["b"]
    q, k, v = (part.reshape(batch, length, num_heads, head) for part in jnp.split(qkv, 3, axis=-1))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head)
    causal = jnp.tril(jnp.ones((length, length), bool))
    # The diagonal is always allowed, so no row is all -inf and the softmax stays finite.
    weights = jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1)
    mixed = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, width)
    return mixed @ params["out"]["w"] + params["out"]["b"]


class TransformerLMFamily(LMFamily):
    """Causal transformer next-token models (see the module docstring).

    Attributes:
      data: a ``tasks.language.TextData``.
      width: residual-stream (and embedding) width.
      num_blocks: transformer blocks.
      num_heads: attention heads per block; must divide ``width``.
      seq_len: tokens per training window (and the number of learned positions).
      batch_size: windows per minibatch.
      init_scale_range: ``(low, high)`` of the log-uniform initial-weight multiplier.
    """

    data: TextData
    width: int = struct.field(pytree_node=False, default=32)
    num_blocks: int = struct.field(pytree_node=False, default=2)
    num_heads: int = struct.field(pytree_node=False, default=2)
    seq_len: int = struct.field(pytree_node=False, default=32)
    batch_size: int = struct.field(pytree_node=False, default=32)
    init_scale_range: tuple[float, float] = struct.field(pytree_node=False, default=(0.5, 2.0))

    def __post_init__(self):
        self._check_positive_ints("width", "num_blocks", "num_heads", "seq_len", "batch_size")
        if self.width % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide width={self.width}")

    @property
    def name(self) -> str:
        return (
            f"tfm_{self.data.name}_w{self.width}_k{self.num_blocks}_h{self.num_heads}"
            f"_l{self.seq_len}_b{self.batch_size}"
        )

    def init_params(self, key: jax.Array, config: LMConfig) -> Params:
        """Token and position embeddings ``N(0, 1)``; input projections ``N(0, 1 / fan_in)``;
        the projections back into the residual stream (attention output, MLP second layer)
        ``N(0, 1 / (2 num_blocks fan_in))`` so the stream's variance stays O(1) with depth
        (GPT-2); all times the init scale. Zero biases, identity LayerNorms."""
        vocab, width, blocks = self.data.vocab_size, self.width, self.num_blocks
        hidden = MLP_EXPANSION * width
        shapes = [(vocab, width), (self.seq_len, width)]
        for _ in range(blocks):
            shapes += [(width, 3 * width), (width, width), (width, hidden), (hidden, width)]
        shapes.append((width, vocab))
        noises = iter(standard_normals(key, shapes))
        scale = config.init_scale
        residual_gain = 1.0 / (2 * blocks)

        def dense(fan_in: int, fan_out: int, gain: float = 1.0) -> Params:
            return {
                "w": scale * math.sqrt(gain / fan_in) * next(noises),
                "b": jnp.zeros((fan_out,), jnp.float32),
            }

        params: dict[str, Params] = {
            "embed": scale * next(noises),
            "position": scale * next(noises),
        }
        for k in range(blocks):
            params[f"block_{k}"] = {
                "norm_attn": layer_norm_params(width),
                "attn": {
                    "qkv": dense(width, 3 * width),
                    "out": dense(width, width, residual_gain),
                },
                "norm_mlp": layer_norm_params(width),
                "mlp": {
                    "dense_0": dense(width, hidden),
                    "dense_1": dense(hidden, width, residual_gain),
                },
            }
        params["norm"] = layer_norm_params(width)
        params["out"] = dense(width, vocab)
        return params

    def apply(self, params: Params, tokens: jax.Array) -> jax.Array:
        """Logits ``[batch, length, vocab]`` of int ``tokens [batch, length]``,
        ``length <= seq_len``."""
        length = tokens.shape[1]
        h = params["embed"][tokens] + params["position"][:length]
        for k in range(self.num_blocks):
            block = params[f"block_{k}"]
            h = h + causal_self_attention(
                block["attn"], layer_norm(h, block["norm_attn"]), self.num_heads
            )
            mlp = block["mlp"]
            u = jax.nn.gelu(
                layer_norm(h, block["norm_mlp"]) @ mlp["dense_0"]["w"] + mlp["dense_0"]["b"]
            )
            h = h + u @ mlp["dense_1"]["w"] + mlp["dense_1"]["b"]
        return layer_norm(h, params["norm"]) @ params["out"]["w"] + params["out"]["b"]


def transformer_lm_family(
    source: str = "markov",
    width: int = 32,
    num_blocks: int = 2,
    num_heads: int = 2,
    seq_len: int = 32,
    batch_size: int = 32,
    vocab_size: int = 32,
    branching: int = 3,
    text_seed: int = 0,
    data_dir: str | None = None,
    init_scale_range: tuple[float, float] = (0.5, 2.0),
) -> TransformerLMFamily:
    """A causal transformer LM family; ``vocab_size``, ``branching`` and ``text_seed`` shape the
    synthetic language (``tasks.language.markov_text``) and are ignored for a TFDS text source."""
    data = text_for_windows(source, data_dir, seq_len, vocab_size, branching, text_seed)
    return TransformerLMFamily(
        data=data,
        width=width,
        num_blocks=num_blocks,
        num_heads=num_heads,
        seq_len=seq_len,
        batch_size=batch_size,
        init_scale_range=tuple(init_scale_range),
    )
