"""Character-level recurrent language models (LSTM or GRU) on a token stream held on the device.

Text sources:

- ``"markov"``: a synthetic language sampled from a random sparse Markov chain with a fixed seed
  (every symbol has ``branching`` possible successors), so a model can bring the loss from
  ``log(vocab_size)`` down to the chain's entropy rate (``markov_text(...).entropy_rate``);
- a TFDS text dataset with a ``"text"`` feature (e.g. ``tiny_shakespeare``) prepared in the
  array_record format in ``TFDS_DATA_DIR``; characters are mapped to tokens;
- ``"auto"``: ``tiny_shakespeare`` when it is prepared, otherwise ``"markov"`` (the family's name
  says which).

A minibatch is ``batch_size`` windows of ``seq_len + 1`` tokens starting at indices drawn with
``jax.random.randint``; the loss is the mean next-token cross-entropy. The dynamic configuration
(``LMConfig``) holds an init seed, a data seed and an initial-weight multiplier.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds
from flax import struct

from tasks.base import SPLITS, Params, Task, TaskFamily, sample_seed, split_index
from tasks.datasets import resolve_data_dir
from tasks.image import classification_metrics, cross_entropy, standard_normals

CELLS = ("lstm", "gru")
DEFAULT_TEXT_DATASET = "tiny_shakespeare"
# Tokens per split of the synthetic language: (train, inner_valid, outer_valid, test).
MARKOV_SPLIT_TOKENS = (65536, 8192, 8192, 8192)


class TextDatasetNotFoundError(FileNotFoundError):
    """A TFDS text dataset that is not prepared (in array_record) in the data dir."""


class TextData(struct.PyTreeNode):
    """Token streams for the four splits (``[n]`` int32 device arrays) and their vocabulary.

    Attributes:
      train, inner_valid, outer_valid, test: token streams.
      name: the source, e.g. ``"markov32"`` or ``"tiny_shakespeare"``.
      vocab_size: number of distinct tokens.
      entropy_rate: nats per token of the source when known (the synthetic chain), else ``None``.
    """

    train: jax.Array
    inner_valid: jax.Array
    outer_valid: jax.Array
    test: jax.Array
    name: str = struct.field(pytree_node=False)
    vocab_size: int = struct.field(pytree_node=False)
    entropy_rate: float | None = struct.field(pytree_node=False, default=None)

    def split(self, split: str) -> jax.Array:
        """The token stream of ``split`` (one of ``SPLITS``)."""
        split_index(split)
        return getattr(self, split)


def markov_chain(vocab_size: int, branching: int, seed: int) -> np.ndarray:
    """A random sparse transition matrix ``[vocab_size, vocab_size]``: each row has ``branching``
    non-zero entries (distinct successors) with Dirichlet(1) probabilities.

    Every symbol ``s`` has ``s + 1 (mod vocab_size)`` among its successors, so the chain is
    irreducible: it has one stationary distribution and its text uses every symbol.
    """
    rng = np.random.default_rng(seed)
    transition = np.zeros((vocab_size, vocab_size))
    for state in range(vocab_size):
        ring_next = (state + 1) % vocab_size
        others = np.delete(np.arange(vocab_size), ring_next)
        successors = [ring_next, *rng.choice(others, size=branching - 1, replace=False)]
        transition[state, successors] = rng.dirichlet(np.ones(branching))
    return transition


def stationary_distribution(transition: np.ndarray) -> np.ndarray:
    """The left eigenvector of ``transition`` for eigenvalue 1, normalised to sum to one."""
    values, vectors = np.linalg.eig(transition.T)
    pi = np.abs(np.real(vectors[:, np.argmin(np.abs(values - 1.0))]))
    return pi / pi.sum()


def entropy_rate(transition: np.ndarray) -> float:
    """``sum_s pi_s H(P[s])`` in nats: the best achievable next-token loss on the chain's text."""
    pi = stationary_distribution(transition)
    logs = np.log(np.where(transition > 0, transition, 1.0))
    return float(-np.sum(pi[:, None] * transition * logs))


def sample_markov_tokens(transition: np.ndarray, length: int, seed: int) -> np.ndarray:
    """``[length]`` int32 tokens of the chain, after a burn-in of ``vocab_size`` steps."""
    rng = np.random.default_rng(seed)
    # Plain Python lists: each step scans a handful of successors, far cheaper than numpy calls.
    successors = [np.flatnonzero(row).tolist() for row in transition]
    cumulative = [np.cumsum(row[row > 0]).tolist() for row in transition]
    burn_in = transition.shape[0]
    tokens = np.empty(length + burn_in, np.int32)
    state = int(rng.integers(transition.shape[0]))
    for i, u in enumerate(rng.random(length + burn_in).tolist()):
        bounds = cumulative[state]
        choice = 0
        while choice < len(bounds) - 1 and u * bounds[-1] >= bounds[choice]:
            choice += 1
        state = successors[state][choice]
        tokens[i] = state
    return tokens[burn_in:]


@functools.lru_cache(maxsize=8)
def markov_text(
    vocab_size: int = 32,
    branching: int = 3,
    seed: int = 0,
    split_tokens: tuple[int, int, int, int] = MARKOV_SPLIT_TOKENS,
) -> TextData:
    """The synthetic language: one chain (fixed by ``seed``), one independent stream per split."""
    if not 1 <= branching <= vocab_size:
        raise ValueError(f"need 1 <= branching <= vocab_size, got {branching}, {vocab_size}")
    transition = markov_chain(vocab_size, branching, seed)
    streams = {
        split: jnp.asarray(sample_markov_tokens(transition, length, seed * 4 + 1 + i))
        for i, (split, length) in enumerate(zip(SPLITS, split_tokens, strict=True))
    }
    return TextData(
        **streams,
        name=f"markov{vocab_size}",
        vocab_size=vocab_size,
        entropy_rate=entropy_rate(transition),
    )


def text_dataset_prepared(name: str = DEFAULT_TEXT_DATASET, data_dir: str | None = None) -> bool:
    """Whether the TFDS dataset ``name`` is prepared in ``data_dir`` (no network access)."""
    return tfds.builder(name, data_dir=str(resolve_data_dir(data_dir))).is_prepared()


def tfds_text(name: str = DEFAULT_TEXT_DATASET, data_dir: str | None = None) -> TextData:
    """Characters of a prepared TFDS text dataset (``"text"`` feature), as token streams.

    The dataset's ``validation`` split is cut in two halves for ``inner_valid`` and
    ``outer_valid``; without one, the last tenth of ``train`` is used. Never downloads.
    """
    import tensorflow_datasets as tfds

    data_dir = str(resolve_data_dir(data_dir))
    prepare = (
        f"python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}', data_dir="
        f"'{data_dir}').download_and_prepare(file_format='array_record')\""
    )
    try:
        sources = tfds.data_source(name, data_dir=data_dir, download=False)
    except (FileNotFoundError, AssertionError, NotImplementedError) as error:
        raise TextDatasetNotFoundError(
            f"text dataset {name!r} is not prepared in array_record format in {data_dir} "
            f"({type(error).__name__}). Prepare it (needs the network once) with:\n  {prepare}"
        ) from error
    texts = {
        split: "".join(_as_text(example["text"]) for example in source)
        for split, source in sources.items()
    }
    if "train" not in texts or "test" not in texts:
        raise ValueError(f"text dataset {name!r} needs train and test splits; has {list(texts)}")
    train = texts["train"]
    valid = texts.get("validation")
    if valid is None:
        cut = len(train) - len(train) // 10
        train, valid = train[:cut], train[cut:]
    half = len(valid) // 2
    split_texts = (train, valid[:half], valid[half:], texts["test"])
    vocab = sorted(set("".join(split_texts)))
    lookup = {char: i for i, char in enumerate(vocab)}
    streams = {
        split: jnp.asarray(np.fromiter((lookup[c] for c in text), np.int32, len(text)))
        for split, text in zip(SPLITS, split_texts, strict=True)
    }
    return TextData(**streams, name=name, vocab_size=len(vocab))


def _as_text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def load_text(source: str = "markov", data_dir: str | None = None, **markov_options) -> TextData:
    """``"markov"``, ``"auto"`` or a TFDS text dataset name (see the module docstring)."""
    if source == "auto":
        prepared = text_dataset_prepared(DEFAULT_TEXT_DATASET, data_dir)
        source = DEFAULT_TEXT_DATASET if prepared else "markov"
    if source == "markov":
        return markov_text(**markov_options)
    return tfds_text(source, data_dir)


def text_for_windows(
    source: str,
    data_dir: str | None,
    seq_len: int,
    vocab_size: int,
    branching: int,
    text_seed: int,
) -> TextData:
    """``load_text`` of a language-model family, checked to hold windows of ``seq_len + 1``
    tokens in every split."""
    data = load_text(source, data_dir, vocab_size=vocab_size, branching=branching, seed=text_seed)
    shortest = min(data.split(split).shape[0] for split in SPLITS)
    if shortest < seq_len + 1:
        raise ValueError(
            f"seq_len={seq_len} needs every split of {data.name!r} to hold at least "
            f"{seq_len + 1} tokens; the shortest has {shortest}. Use a shorter seq_len."
        )
    return data


class LMConfig(NamedTuple):
    """Dynamic configuration of a language-model task: ``init_seed``, ``data_seed`` (``[]``
    uint32) and ``init_scale`` (``[]`` float32)."""

    init_seed: jax.Array
    data_seed: jax.Array
    init_scale: jax.Array


def _lstm_step(params: Params, carry, inputs: jax.Array):
    """``((hidden, cell), hidden)`` of one LSTM step on ``inputs [batch, embed]``.

    The gate maths of ``lopt.lstm.lstm_cell``, repeated because ``tasks`` and ``lopt`` are
    independent packages (tests/test_layering.py); flax's cells would change this task's params
    (one kernel per gate, the tensors a learned optimizer sees)."""
    hidden, cell = carry
    gates = inputs @ params["w_x"] + hidden @ params["w_h"] + params["b"]
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    cell = jax.nn.sigmoid(f) * cell + jax.nn.sigmoid(i) * jnp.tanh(g)
    hidden = jax.nn.sigmoid(o) * jnp.tanh(cell)
    return (hidden, cell), hidden


def _gru_step(params: Params, carry, inputs: jax.Array):
    (hidden,) = carry
    x_gates = inputs @ params["w_x"] + params["b"]
    h_gates = hidden @ params["w_h"]
    x_r, x_z, x_n = jnp.split(x_gates, 3, axis=-1)
    h_r, h_z, h_n = jnp.split(h_gates, 3, axis=-1)
    reset = jax.nn.sigmoid(x_r + h_r)
    update = jax.nn.sigmoid(x_z + h_z)
    candidate = jnp.tanh(x_n + reset * h_n)
    hidden = (1.0 - update) * candidate + update * hidden
    return (hidden,), hidden


class LMTask(Task):
    """One language-modelling task of a ``CharLMFamily``."""

    def __init__(self, family: LMFamily, config: LMConfig):
        self.family = family
        self.config = config

    def init(self, key: jax.Array) -> Params:
        return self.family.init_params(jax.random.fold_in(key, self.config.init_seed), self.config)

    def _batch_loss(self, params: Params, key: jax.Array, split: str) -> jax.Array:
        stream = self.family.data.split(split)
        window = self.family.seq_len + 1
        key = jax.random.fold_in(key, self.config.data_seed)
        starts = jax.random.randint(key, (self.family.batch_size,), 0, stream.shape[0] - window + 1)
        tokens = stream.at[starts[:, None] + jnp.arange(window)].get(mode="promise_in_bounds")
        logits = self.family.apply(params, tokens[:, :-1])
        return jnp.mean(cross_entropy(logits, tokens[:, 1:]))

    def loss(self, params: Params, key: jax.Array) -> jax.Array:
        return self._batch_loss(params, key, "train")

    def eval_loss(self, params: Params, key: jax.Array, split: str = "outer_valid") -> jax.Array:
        return self._batch_loss(params, key, split)

    def evaluate(self, params: Params, split: str = "test") -> dict[str, jax.Array]:
        """Loss and next-token accuracy over the split cut into disjoint windows."""
        stream = self.family.data.split(split)
        length = self.family.seq_len
        num_windows = (stream.shape[0] - 1) // length
        inputs = stream[: num_windows * length].reshape(num_windows, length)
        targets = stream[1 : num_windows * length + 1].reshape(num_windows, length)
        return classification_metrics(
            lambda x: self.family.apply(params, x), inputs, targets, chunk_size=256
        )


class LMFamily(TaskFamily):
    """What the language-model families share: the dynamic config (seeds and a log-uniform initial
    scale in the family's ``init_scale_range``) and ``LMTask``; a family adds its fields,
    ``init_params`` and ``apply`` (logits ``[batch, seq_len, vocab]`` of tokens)."""

    def _check_positive_ints(self, *fields: str) -> None:
        for field in fields:
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{field} must be a positive int, got {value!r}")
        low, high = self.init_scale_range
        if not 0.0 < low <= high:
            raise ValueError(f"init_scale_range must satisfy 0 < low <= high, got {low, high}")

    def sample(self, key: jax.Array) -> LMConfig:
        init_key, data_key, scale_key = jax.random.split(key, 3)
        low, high = self.init_scale_range
        log_scale = jax.random.uniform(scale_key, (), minval=math.log(low), maxval=math.log(high))
        return LMConfig(sample_seed(init_key), sample_seed(data_key), jnp.exp(log_scale))

    def default_config(self) -> LMConfig:
        zero = jnp.zeros((), jnp.uint32)
        return LMConfig(zero, zero, jnp.ones((), jnp.float32))

    def task(self, config: LMConfig) -> LMTask:
        return LMTask(self, config)


class CharLMFamily(LMFamily):
    """Recurrent next-character models: embedding, one LSTM or GRU layer, dense output.

    Attributes:
      data: a ``TextData``.
      cell: ``"lstm"`` or ``"gru"``.
      hidden: recurrent state width.
      embed: embedding width.
      seq_len: tokens per training window.
      batch_size: windows per minibatch.
      init_scale_range: ``(low, high)`` of the log-uniform initial-weight multiplier.
    """

    data: TextData
    cell: str = struct.field(pytree_node=False, default="lstm")
    hidden: int = struct.field(pytree_node=False, default=32)
    embed: int = struct.field(pytree_node=False, default=16)
    seq_len: int = struct.field(pytree_node=False, default=32)
    batch_size: int = struct.field(pytree_node=False, default=32)
    init_scale_range: tuple[float, float] = struct.field(pytree_node=False, default=(0.5, 2.0))

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ValueError(f"unknown cell {self.cell!r}; use one of {', '.join(CELLS)}")
        self._check_positive_ints("hidden", "embed", "seq_len", "batch_size")

    @property
    def name(self) -> str:
        return (
            f"lm_{self.data.name}_{self.cell}{self.hidden}_e{self.embed}"
            f"_l{self.seq_len}_b{self.batch_size}"
        )

    def init_params(self, key: jax.Array, config: LMConfig) -> Params:
        """Embedding ``N(0, 1)``, recurrent and output weights ``N(0, 1 / fan_in)``, all times the
        init scale; zero biases except the LSTM forget gate's (1, a common default)."""
        vocab, hidden, embed = self.data.vocab_size, self.hidden, self.embed
        gates = 4 if self.cell == "lstm" else 3
        embed_noise, x_noise, h_noise, out_noise = standard_normals(
            key,
            [(vocab, embed), (embed, gates * hidden), (hidden, gates * hidden), (hidden, vocab)],
        )
        scale = config.init_scale
        bias = jnp.zeros((gates * hidden,), jnp.float32)
        if self.cell == "lstm":
            bias = bias.at[hidden : 2 * hidden].set(1.0)
        return {
            "embed": scale * embed_noise,
            "cell": {
                "w_x": scale / math.sqrt(embed) * x_noise,
                "w_h": scale / math.sqrt(hidden) * h_noise,
                "b": bias,
            },
            "out": {
                "w": scale / math.sqrt(hidden) * out_noise,
                "b": jnp.zeros((vocab,), jnp.float32),
            },
        }

    def apply(self, params: Params, tokens: jax.Array) -> jax.Array:
        """Logits ``[batch, length, vocab]`` of int ``tokens [batch, length]``."""
        batch = tokens.shape[0]
        inputs = jnp.swapaxes(params["embed"][tokens], 0, 1)  # [length, batch, embed]
        zeros = jnp.zeros((batch, self.hidden), jnp.float32)
        if self.cell == "lstm":
            carry, step = (zeros, zeros), _lstm_step
        else:
            carry, step = (zeros,), _gru_step
        _, hiddens = jax.lax.scan(lambda c, x: step(params["cell"], c, x), carry, inputs)
        logits = hiddens @ params["out"]["w"] + params["out"]["b"]
        return jnp.swapaxes(logits, 0, 1)


def lm_family(
    source: str = "markov",
    cell: str = "lstm",
    hidden: int = 32,
    embed: int = 16,
    seq_len: int = 32,
    batch_size: int = 32,
    vocab_size: int = 32,
    branching: int = 3,
    text_seed: int = 0,
    data_dir: str | None = None,
    init_scale_range: tuple[float, float] = (0.5, 2.0),
) -> CharLMFamily:
    """A character-LM family; ``vocab_size``, ``branching`` and ``text_seed`` shape the synthetic
    language and are ignored for a TFDS text source."""
    data = text_for_windows(source, data_dir, seq_len, vocab_size, branching, text_seed)
    return CharLMFamily(
        data=data,
        cell=cell,
        hidden=hidden,
        embed=embed,
        seq_len=seq_len,
        batch_size=batch_size,
        init_scale_range=tuple(init_scale_range),
    )
