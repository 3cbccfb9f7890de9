"""GPT-2 and the Llama family in Keras 3 (``keras.ops`` only): causal LM and classifier, one block code for both.
Mirrors ``llmdual/backends/torch/model.py``; attention runs in ``ops.dot_product_attention`` for every family.

Sublayer attributes carry the canonical weight names (``wte``, ``h[0].attn.c_attn``, ...); Dense kernels are
already ``[in, out]``, the canonical layout. Runs on Keras' TensorFlow, JAX and torch backends.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from llmdual.core import validate
from llmdual.core.config import Config

NEG_INF = -1e9  # finite "minus infinity": exp() underflows to exactly 0 in fp32, like -inf, without NaN risk


class Attention(keras.layers.Layer):
    """Multi-head (or grouped-query: fewer key/value heads) self-attention with a fused qkv projection, rotary
    positions when given ``rope``, and an optional KV cache: ``past`` is grown by concatenation, or with ``start``
    it is a static cache whose buffers take the new keys and values in place."""

    def __init__(self, config: Config, **kwargs):
        super().__init__(**kwargs)
        C = config.d_model
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.kv_heads, config.head_dim
        self.c_attn = keras.layers.Dense(config.qkv_width, use_bias=config.qkv_biased, name="c_attn")
        self.c_proj = keras.layers.Dense(C, use_bias=config.attn_bias, name="c_proj")
        self.attn_dropout = keras.layers.Dropout(config.dropout)  # on the attention probabilities
        self.resid_dropout = keras.layers.Dropout(config.dropout)

    def build(self, input_shape):
        self.c_attn.build(input_shape)
        self.c_proj.build(input_shape)

    def call(self, x, attn_mask=None, causal=True, past=None, start=None, rope=None, training=None):
        B, T, C = ops.shape(x)[0], ops.shape(x)[1], x.shape[-1]
        kv, hs = self.n_kv_heads * self.head_dim, self.head_dim
        q, k, v = ops.split(self.c_attn(x), [C, C + kv], axis=-1)
        q = ops.reshape(q, (B, T, self.n_heads, hs))  # (B, T, nh, hs): dot_product_attention's layout
        k = ops.reshape(k, (B, T, self.n_kv_heads, hs))
        v = ops.reshape(v, (B, T, self.n_kv_heads, hs))
        if rope is not None:
            q, k = rotate(q, *rope), rotate(k, *rope)
        k, v = ops.transpose(k, (0, 2, 1, 3)), ops.transpose(v, (0, 2, 1, 3))  # (B, nkv, T, hs): the cache's layout
        if start is not None:
            k = ops.cast(ops.slice_update(past[0], (0, 0, start, 0), ops.cast(k, past[0].dtype)), q.dtype)  # (B, nkv, L, hs)
            v = ops.cast(ops.slice_update(past[1], (0, 0, start, 0), ops.cast(v, past[1].dtype)), q.dtype)
        elif past is not None:
            k = ops.concatenate([past[0], k], axis=2)  # (B, nkv, T_past + T, hs)
            v = ops.concatenate([past[1], v], axis=2)
        keys, values = ops.transpose(k, (0, 2, 1, 3)), ops.transpose(v, (0, 2, 1, 3))  # (B, S, nkv, hs)
        if self.n_kv_heads == 1 < self.n_heads:  # Keras 3.15's TF backend shares only 2+ kv heads: MQA by hand
            keys, values = ops.repeat(keys, self.n_heads, axis=2), ops.repeat(values, self.n_heads, axis=2)
        scale = 1.0 / float(np.sqrt(hs))
        if training and self.attn_dropout.rate > 0:
            y = self._dropped_attention(q, keys, values, attn_mask, scale)
        else:  # the op shares each key/value head among its group of query heads (GQA)
            y = ops.dot_product_attention(q, keys, values, mask=attn_mask, scale=scale)  # (B, T, nh, hs)
        y = ops.reshape(y, (B, T, C))  # re-assemble heads side by side
        return self.resid_dropout(self.c_proj(y), training=training), (k, v)

    def _dropped_attention(self, q, k, v, attn_mask, scale):
        """Attention with dropout on its probabilities, for training with ``dropout`` (as torch's SDPA drops them):
        ``ops.dot_product_attention`` has no dropout, so here the probabilities are formed to be dropped."""
        groups = self.n_heads // self.n_kv_heads
        k, v = ops.repeat(k, groups, axis=2), ops.repeat(v, groups, axis=2)
        att = ops.einsum("btnh,bsnh->bnts", q, k) * ops.cast(scale, q.dtype)
        if attn_mask is not None:
            att = ops.where(attn_mask, att, ops.cast(NEG_INF, att.dtype))
        att = ops.cast(ops.softmax(ops.cast(att, "float32"), axis=-1), v.dtype)
        return ops.einsum("bnts,bsnh->btnh", self.attn_dropout(att, training=True), v)


class MLP(keras.layers.Layer):
    """Position-wise feed-forward: c_fc, GELU (tanh approximation, as GPT-2) or SwiGLU (c_fc's gate and up halves:
    ``silu(gate) * up``, as Llama), c_proj."""

    def __init__(self, config: Config, **kwargs):
        super().__init__(**kwargs)
        self.swiglu = config.mlp == "swiglu"
        self.c_fc = keras.layers.Dense(config.fc_width, use_bias=config.mlp_bias, name="c_fc")
        self.c_proj = keras.layers.Dense(config.d_model, use_bias=config.mlp_bias, name="c_proj")
        self.dropout = keras.layers.Dropout(config.dropout)

    def build(self, input_shape):
        self.c_fc.build(input_shape)
        self.c_proj.build((*input_shape[:-1], self.c_fc.units // (2 if self.swiglu else 1)))

    def call(self, x, training=None):
        h = self.c_fc(x)
        if self.swiglu:
            gate, up = ops.split(h, 2, axis=-1)
            h = ops.silu(gate) * up
        else:
            h = ops.gelu(h, approximate=True)
        return self.dropout(self.c_proj(h), training=training)


def norm(config: Config, name: str) -> keras.layers.Layer:
    """The config's normalisation: LayerNorm (GPT-2) or RMSNorm (Llama)."""
    if config.norm == "rms":
        return keras.layers.RMSNormalization(epsilon=config.norm_eps, name=name)
    return keras.layers.LayerNormalization(epsilon=config.norm_eps, name=name)


class Block(keras.layers.Layer):
    """Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: Config, **kwargs):
        super().__init__(**kwargs)
        self.ln_1 = norm(config, "ln_1")
        self.attn = Attention(config, name="attn")
        self.ln_2 = norm(config, "ln_2")
        self.mlp = MLP(config, name="mlp")

    def build(self, input_shape):
        for layer in (self.ln_1, self.attn, self.ln_2, self.mlp):
            layer.build(input_shape)

    def call(self, x, attn_mask=None, causal=True, past=None, start=None, rope=None, training=None):
        """Block output, its (k, v) cache, and the residual stream between attention and MLP (for tracing)."""
        a, present = self.attn(self.ln_1(x), attn_mask=attn_mask, causal=causal, past=past, start=start, rope=rope,
                               training=training)
        mid = x + a
        return mid + self.mlp(self.ln_2(mid), training=training), present, mid


class Transformer(keras.Model):
    """Embeddings, the stack of blocks and the final norm shared by the LM and the classifier."""

    causal = True
    lora = None  # the model's llmdual.core.lora_spec.LoraSpec once it has adapters (see lora.py)

    def __init__(self, config: Config | dict, **kwargs):
        super().__init__(**kwargs)
        config = config if isinstance(config, Config) else Config.from_dict(config)
        self.config = config
        self.wte = keras.layers.Embedding(config.vocab_size, config.d_model, name="wte")
        if config.positions == "learned":
            self.wpe = keras.layers.Embedding(config.max_seq_len, config.d_model, name="wpe")
        self.drop = keras.layers.Dropout(config.dropout)
        self.h = [Block(config, name=f"h_{i}") for i in range(config.n_layers)]
        self.ln_f = norm(config, "ln_f")

    def build(self, input_shape=None):
        hidden_shape = (None, None, self.config.d_model)
        self.wte.build((None, None))
        if self.config.positions == "learned":
            self.wpe.build((None, None))
        for block in self.h:
            block.build(hidden_shape)
        self.ln_f.build(hidden_shape)
        self.built = True

    def get_config(self):
        return {**super().get_config(), "config": self.config.to_dict()}

    def check_inputs(self, input_ids, attention_mask=None, past=None, position_ids=None) -> None:
        """Refuse bad ids, mask or length with ``llmdual.core.validate`` (eager only: traced values are unknown)."""
        ids = _concrete(input_ids)
        if ids is not None:
            past_len = 0 if past is None else int(ops.shape(past[0][0])[2])
            try:
                validate.check_inputs(ids, self.config, _concrete(attention_mask), past_len, _concrete(position_ids))
            except ValueError as err:
                err._keras_call_info_injected = True  # Keras' marker: raise the message as is, as the others do
                raise

    def hidden(self, input_ids, attention_mask=None, past=None, position_ids=None, trace=None, training=None,
               start=None):
        """Final-normed hidden states (B, T, C) and the per-layer (k, v) cache; with ``start``, ``past`` is a
        static cache written at slots ``start``.. and ``attention_mask`` covers its slots (see ``forward_static``)."""
        if start is None:
            self.check_inputs(input_ids, attention_mask, past, position_ids)
            T, past_len = ops.shape(input_ids)[1], 0 if past is None else ops.shape(past[0][0])[2]
            attn_mask = attention_bias(attention_mask, T, past_len, self.causal)
        else:
            T, past_len = ops.shape(input_ids)[1], start
            attn_mask = cache_bias(attention_mask, start, T)
        if position_ids is None:
            position_ids = ops.expand_dims(past_len + ops.arange(T), 0)
        rope = None
        if self.config.positions == "learned":
            x = self.drop(self.wte(input_ids) + self.wpe(position_ids), training=training)
        else:
            x = self.drop(self.wte(input_ids), training=training)
            rope = rotary(position_ids, self.config.head_dim, self.config.rope_theta, x.dtype)
        if trace is not None:
            trace.append(x)
        present = []
        for i, block in enumerate(self.h):
            x, kv, mid = block(
                x, attn_mask=attn_mask, causal=self.causal, past=None if past is None else past[i], start=start,
                rope=rope, training=training,
            )
            present.append(kv)
            if trace is not None:
                trace += [mid, x]
        x = self.ln_f(x)
        if trace is not None:
            trace.append(x)
        return x, present


@keras.saving.register_keras_serializable(package="llmdual")
class GPT(Transformer):
    """Causal language model; the head is tied to the token embedding unless ``tie_embeddings`` is False."""

    task = "lm"

    def __init__(self, config: Config | dict, **kwargs):
        super().__init__(config, **kwargs)
        if not self.config.tie_embeddings:
            self.lm_head = keras.layers.Dense(self.config.vocab_size, use_bias=False, name="lm_head")

    def build(self, input_shape=None):
        if not self.config.tie_embeddings:
            self.lm_head.build((None, None, self.config.d_model))
        super().build(input_shape)

    def head(self, x):
        if self.config.tie_embeddings:
            return ops.matmul(x, ops.transpose(ops.cast(self.wte.embeddings, x.dtype)))
        return self.lm_head(x)

    def call(self, input_ids, attention_mask=None, training=None):
        """Logits (B, T, vocab_size)."""
        input_ids, attention_mask = _unpack(input_ids, attention_mask)
        x, _ = self.hidden(input_ids, attention_mask, training=training)
        return self.head(x)

    def forward_cached(self, input_ids, past_key_values=None, attention_mask=None, position_ids=None):
        """Logits of the new tokens and the cache extended by them.

        ``past_key_values`` is a list of per-layer ``(k, v)``, each (B, kv_heads, T_past, head_dim);
        ``attention_mask`` (B, T_past + T) marks real tokens among past and new ones.
        """
        x, present = self.hidden(input_ids, attention_mask, past_key_values, position_ids)
        return self.head(x), present

    def forward_static(self, input_ids, cache, start, attention_mask, position_ids):
        """Logits of the last new token (B, vocab_size) and the static cache holding the new tokens too.

        ``cache``: per-layer ``(k, v)`` buffers (B, kv_heads, L, head_dim), updated with ``ops.slice_update`` at
        slots ``start`` (a 0-d int tensor) onwards; ``attention_mask`` (B, L) marks real tokens among the slots
        (unwritten slots are never attended); ``position_ids`` (B, T). Inputs are not validated here: the
        decoder checks them.
        """
        x, present = self.hidden(input_ids, attention_mask, cache, position_ids, start=start)
        return self.head(x[:, -1]), present


@keras.saving.register_keras_serializable(package="llmdual")
class Classifier(Transformer):
    """Sequence classifier, linear ``score`` head over pooled states: bidirectional blocks and mean pooling over
    real tokens (``pooling="mean"``), or causal blocks and the last real token (``"last"``, as Llama's)."""

    task = "classifier"
    causal = False

    def __init__(self, config: Config | dict, **kwargs):
        super().__init__(config, **kwargs)
        self.causal = self.config.pooling == "last"
        self.score = keras.layers.Dense(self.config.num_classes, use_bias=not self.causal, name="score")

    def build(self, input_shape=None):
        self.score.build((None, self.config.d_model))
        super().build(input_shape)

    def call(self, input_ids, attention_mask=None, training=None):
        """Class logits (B, num_classes)."""
        input_ids, attention_mask = _unpack(input_ids, attention_mask)
        x, _ = self.hidden(input_ids, attention_mask, training=training)
        return self.score(last_token(x, attention_mask) if self.causal else mean_pool(x, attention_mask))


def attention_bias(attention_mask, T, past_len, causal):
    """Boolean mask (B or 1, 1, T, past_len + T), True where a query may attend; None when no mask is needed.

    Each query may always attend to itself, so a row is never fully masked (no NaN on padding).
    """
    if attention_mask is None and not causal:
        return None  # full attention
    S = past_len + T
    q_pos = ops.expand_dims(ops.arange(past_len, S), 1)
    k_pos = ops.expand_dims(ops.arange(S), 0)
    allowed = ops.less_equal(k_pos, q_pos) if causal else ops.ones((T, S), dtype="bool")
    allowed = allowed[None, None]  # (1, 1, T, S)
    if attention_mask is not None:
        allowed = ops.logical_and(allowed, ops.cast(attention_mask, "bool")[:, None, None, :])
    return ops.logical_or(allowed, ops.equal(k_pos, q_pos)[None, None])


def cache_bias(attention_mask, start, T):
    """Boolean mask (B, 1, T, L) over a static cache's L slots for queries at slots ``start``..: causal, real
    tokens of ``attention_mask`` (B, L) only, and each query always itself (no NaN on padding)."""
    q_pos = ops.expand_dims(start + ops.arange(T, dtype="int32"), 1)
    k_pos = ops.expand_dims(ops.arange(ops.shape(attention_mask)[1], dtype="int32"), 0)
    allowed = ops.logical_and(ops.less_equal(k_pos, q_pos)[None, None], ops.cast(attention_mask, "bool")[:, None, None, :])
    return ops.logical_or(allowed, ops.equal(k_pos, q_pos)[None, None])


def rotary(position_ids, head_dim, theta, dtype):
    """RoPE's (cos, sin), each (B, T, 1, head_dim), for ``position_ids`` (B, T): Hugging Face's convention, the
    frequencies ``theta ** (-2j / head_dim)`` computed in float32 and repeated for both halves of a head."""
    exponents = ops.cast(ops.arange(0, head_dim, 2), "float32") / float(head_dim)
    inv_freq = 1.0 / ops.power(ops.cast(theta, "float32"), exponents)
    angles = ops.cast(position_ids, "float32")[:, :, None, None] * inv_freq  # (B, T, 1, head_dim / 2)
    angles = ops.concatenate([angles, angles], axis=-1)
    return ops.cast(ops.cos(angles), dtype), ops.cast(ops.sin(angles), dtype)


def rotate(x, cos, sin):
    """Rotary position embedding of heads ``x`` (B, T, h, hs): ``x * cos + rotate_half(x) * sin``, rotate_half
    turning (x1, x2) into (-x2, x1) over the halves of each head, as Hugging Face's Llama (so its weights load)."""
    x1, x2 = ops.split(x, 2, axis=-1)
    return x * cos + ops.concatenate([-x2, x1], axis=-1) * sin


def last_token(x, attention_mask):
    """Hidden state of each row's last real (mask 1) token; the last position without a mask."""
    if attention_mask is None:
        return x[:, -1]
    positions = ops.arange(ops.shape(x)[1], dtype="int32")
    last = ops.argmax(positions * ops.cast(attention_mask, "int32"), axis=-1)
    return ops.take_along_axis(x, ops.reshape(ops.cast(last, "int32"), (-1, 1, 1)), axis=1)[:, 0]


def mean_pool(x, attention_mask):
    """Mean of hidden states over real (mask 1) tokens."""
    if attention_mask is None:
        return ops.mean(x, axis=1)
    m = ops.expand_dims(ops.cast(attention_mask, x.dtype), -1)  # (B, T, 1)
    return ops.sum(x * m, axis=1) / ops.maximum(ops.sum(m, axis=1), 1.0)


def _unpack(input_ids, attention_mask):
    """Accept ``model(ids, mask)`` and ``model({"input_ids": ..., "attention_mask": ...})`` (as ``fit`` passes)."""
    if isinstance(input_ids, dict):
        return input_ids["input_ids"], input_ids.get("attention_mask", attention_mask)
    return input_ids, attention_mask


def _concrete(x):
    """The numpy value of ``x`` when it has one (eager), else None (None, or inside a traced graph or jit)."""
    if x is None:
        return None
    try:
        return np.asarray(ops.convert_to_numpy(x))
    except Exception:  # noqa: BLE001  (symbolic tensors of every backend raise here, each its own error type)
        return None


def cross_entropy(logits, targets):
    """Mean cross-entropy over positions whose target is not -100 (PyTorch's ignore index)."""
    logits = ops.reshape(ops.cast(logits, "float32"), (-1, ops.shape(logits)[-1]))
    targets = ops.reshape(targets, (-1,))
    keep = ops.not_equal(targets, -100)
    losses = ops.sparse_categorical_crossentropy(ops.where(keep, targets, 0), logits, from_logits=True)
    keep = ops.cast(keep, "float32")
    return ops.sum(losses * keep) / ops.maximum(ops.sum(keep), 1.0)
