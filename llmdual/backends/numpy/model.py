"""GPT-2 and the Llama family in float64 NumPy: causal LM and classifier, the reference every parity table reports against. Mirrors
``llmdual/backends/torch/model.py`` class for class, slow on purpose: plain matrix products in float64, no
dropout (the reference only runs inference), nothing fused.

Attribute names are the canonical weight names (``wte``, ``h[0].attn.c_attn``, ...) and every projection is kept
``[in, out]``, the canonical layout, so ``y = x @ weight + bias``; only an untied ``lm_head`` is stored transposed
(see ``weights.py``).
"""

from __future__ import annotations

import math

import numpy as np

from llmdual.core import validate
from llmdual.core.config import Config

KVCache = list[tuple[np.ndarray, np.ndarray]]


class Module:
    """What ``nn.Module`` gives the torch classes and the classes here need: calling a module runs ``forward``."""

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)


class Linear(Module):
    """``x @ weight + bias`` with ``weight`` [in, out] (GPT-2's Conv1D layout)."""

    def __init__(self, n_in: int, n_out: int, bias: bool = True):
        self.weight = np.zeros((n_in, n_out))
        self.bias = np.zeros(n_out) if bias else None

    def forward(self, x):
        y = x @ self.weight
        return y if self.bias is None else y + self.bias


class Embedding(Module):
    """A table of ``rows`` vectors, looked up by integer ids."""

    def __init__(self, rows: int, dim: int):
        self.weight = np.zeros((rows, dim))

    def forward(self, ids):
        return self.weight[ids]


class LayerNorm(Module):
    """Normalisation over the last axis with the biased variance, as ``nn.LayerNorm`` and Keras compute it."""

    def __init__(self, dim: int, eps: float):
        self.weight = np.ones(dim)
        self.bias = np.zeros(dim)
        self.eps = eps

    def forward(self, x):
        mean = x.mean(axis=-1, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
        return (x - mean) / np.sqrt(var + self.eps) * self.weight + self.bias


class RMSNorm(Module):
    """Root-mean-square normalisation over the last axis, a scale and no bias (Llama's)."""

    def __init__(self, dim: int, eps: float):
        self.weight = np.ones(dim)
        self.eps = eps

    def forward(self, x):
        return x / np.sqrt((x**2).mean(axis=-1, keepdims=True) + self.eps) * self.weight


def norm(config: Config) -> Module:
    """The config's normalisation: LayerNorm (GPT-2) or RMSNorm (Llama)."""
    return (RMSNorm if config.norm == "rms" else LayerNorm)(config.d_model, config.norm_eps)


def gelu(x):
    """GELU, tanh approximation, as GPT-2 (``gelu_new``)."""
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def softmax(x):
    """Softmax over the last axis; ``-inf`` entries get exactly 0."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class Attention(Module):
    """Multi-head (or grouped-query: fewer key/value heads) self-attention with a fused qkv projection, rotary
    positions when given ``rope``, and an optional KV cache: ``past`` is grown by concatenation, or with ``start``
    it is a static cache whose buffers take the new keys and values in place."""

    def __init__(self, config: Config):
        C = config.d_model
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.kv_heads, config.head_dim
        self.c_attn = Linear(C, config.qkv_width, bias=config.qkv_biased)
        self.c_proj = Linear(C, C, bias=config.attn_bias)

    def forward(self, x, attn_mask=None, causal=True, past=None, start=None, rope=None):
        B, T, C = x.shape
        kv, hs = self.n_kv_heads * self.head_dim, self.head_dim
        q, k, v = np.split(self.c_attn(x), [C, C + kv], axis=2)
        q = q.reshape(B, T, self.n_heads, hs).transpose(0, 2, 1, 3)  # (B, nh, T, hs)
        k = k.reshape(B, T, self.n_kv_heads, hs).transpose(0, 2, 1, 3)  # (B, nkv, T, hs)
        v = v.reshape(B, T, self.n_kv_heads, hs).transpose(0, 2, 1, 3)
        if rope is not None:
            q, k = rotate(q, *rope), rotate(k, *rope)
        if start is not None:
            past[0][:, :, start : start + T] = k
            past[1][:, :, start : start + T] = v
            k, v = past  # (B, nkv, L, hs)
        elif past is not None:
            k = np.concatenate([past[0], k], axis=2)  # (B, nkv, T_past + T, hs)
            v = np.concatenate([past[1], v], axis=2)
        groups = self.n_heads // self.n_kv_heads  # each key/value head serves this many query heads, in order
        keys, values = np.repeat(k, groups, axis=1), np.repeat(v, groups, axis=1)
        att = q @ keys.transpose(0, 1, 3, 2) / math.sqrt(hs)  # (B, nh, T, S)
        if attn_mask is not None:
            att = np.where(attn_mask, att, -np.inf)  # a query always sees itself: no row is all -inf
        y = softmax(att) @ values  # (B, nh, T, hs)
        y = y.transpose(0, 2, 1, 3).reshape(B, T, C)  # re-assemble heads side by side
        return self.c_proj(y), (k, v)


class MLP(Module):
    """Position-wise feed-forward: c_fc, GELU (tanh approximation, as GPT-2) or SwiGLU (c_fc's gate and up halves:
    ``silu(gate) * up``, as Llama), c_proj."""

    def __init__(self, config: Config):
        self.swiglu = config.mlp == "swiglu"
        self.c_fc = Linear(config.d_model, config.fc_width, bias=config.mlp_bias)
        self.c_proj = Linear(config.d_ff, config.d_model, bias=config.mlp_bias)

    def forward(self, x):
        h = self.c_fc(x)
        if self.swiglu:
            gate, up = np.split(h, 2, axis=-1)
            return self.c_proj(gate / (1.0 + np.exp(-gate)) * up)  # silu(gate) * up
        return self.c_proj(gelu(h))


class Block(Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: Config):
        self.ln_1 = norm(config)
        self.attn = Attention(config)
        self.ln_2 = norm(config)
        self.mlp = MLP(config)

    def forward(self, x, attn_mask=None, causal=True, past=None, start=None, rope=None):
        """Block output, its (k, v) cache, and the residual stream between attention and MLP (for tracing)."""
        a, present = self.attn(self.ln_1(x), attn_mask=attn_mask, causal=causal, past=past, start=start, rope=rope)
        mid = x + a
        return mid + self.mlp(self.ln_2(mid)), present, mid


class Transformer(Module):
    """Embeddings, the stack of blocks and the final norm shared by the LM and the classifier."""

    causal = True
    lora = None  # this backend takes no adapters; the verbs read the attribute on every model
    quantized = None  # nor int8

    def __init__(self, config: Config):
        self.config = config
        self.wte = Embedding(config.vocab_size, config.d_model)
        if config.positions == "learned":
            self.wpe = Embedding(config.max_seq_len, config.d_model)
        self.h = [Block(config) for _ in range(config.n_layers)]
        self.ln_f = norm(config)

    def check_inputs(self, input_ids, attention_mask=None, past=None, position_ids=None) -> None:
        """Refuse bad ids, mask or length with ``llmdual.core.validate``, as the other backends do."""
        past_len = 0 if past is None else past[0][0].shape[2]
        validate.check_inputs(input_ids, self.config, attention_mask, past_len, position_ids)

    def hidden(self, input_ids, attention_mask=None, past=None, position_ids=None, trace=None, start=None):
        """Final-normed hidden states (B, T, C) and the per-layer (k, v) cache; with ``start``, ``past`` is a
        static cache written at slots ``start``.. and ``attention_mask`` covers its slots (see ``forward_static``)."""
        if start is None:
            self.check_inputs(input_ids, attention_mask, past, position_ids)
            T, past_len = input_ids.shape[1], 0 if past is None else past[0][0].shape[2]
            attn_mask = attention_bias(attention_mask, T, past_len, self.causal)
        else:
            T, past_len = input_ids.shape[1], start
            attn_mask = cache_bias(attention_mask, start, T)
        if position_ids is None:
            position_ids = (past_len + np.arange(T))[None]
        rope = None
        if self.config.positions == "learned":
            x = self.wte(input_ids) + self.wpe(position_ids)
        else:
            x = self.wte(input_ids)
            rope = rotary(np.asarray(position_ids), self.config.head_dim, self.config.rope_theta)
        if trace is not None:
            trace.append(x)
        present = []
        for i, block in enumerate(self.h):
            x, kv, mid = block(x, attn_mask=attn_mask, causal=self.causal, past=None if past is None else past[i],
                               start=start, rope=rope)
            present.append(kv)
            if trace is not None:
                trace += [mid, x]
        x = self.ln_f(x)
        if trace is not None:
            trace.append(x)
        return x, present


class GPT(Transformer):
    """Causal language model; the head is tied to the token embedding unless ``tie_embeddings`` is False."""

    task = "lm"

    def __init__(self, config: Config):
        super().__init__(config)
        if not config.tie_embeddings:
            self.lm_head = Linear(config.d_model, config.vocab_size, bias=False)

    def head(self, x):
        return x @ self.wte.weight.T if self.config.tie_embeddings else self.lm_head(x)

    def forward(self, input_ids, attention_mask=None):
        """Logits (B, T, vocab_size)."""
        x, _ = self.hidden(input_ids, attention_mask)
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

        ``cache``: per-layer ``(k, v)`` buffers (B, kv_heads, L, head_dim), written in place at slots ``start`` (an
        int) onwards; ``attention_mask`` (B, L) marks real tokens among the slots (unwritten slots are never
        attended); ``position_ids`` (B, T). Inputs are not validated here: the decoder checks them.
        """
        x, present = self.hidden(input_ids, attention_mask, cache, position_ids, start=start)
        return self.head(x[:, -1]), present


class Classifier(Transformer):
    """Sequence classifier, linear ``score`` head over pooled states: bidirectional blocks and mean pooling over
    real tokens (``pooling="mean"``), or causal blocks and the last real token (``"last"``, as Llama's)."""

    task = "classifier"
    causal = False

    def __init__(self, config: Config):
        super().__init__(config)
        self.causal = config.pooling == "last"
        self.score = Linear(config.d_model, config.num_classes, bias=not self.causal)

    def forward(self, input_ids, attention_mask=None):
        """Class logits (B, num_classes)."""
        x, _ = self.hidden(input_ids, attention_mask)
        return self.score(last_token(x, attention_mask) if self.causal else mean_pool(x, attention_mask))


def attention_bias(attention_mask, T, past_len, causal):
    """Boolean mask (B or 1, 1, T, past_len + T), True where a query may attend; None when no mask is needed.

    Each query may always attend to itself, so a row is never fully masked (no NaN on padding).
    """
    if attention_mask is None and not causal:
        return None  # full attention
    S = past_len + T
    q_pos = np.arange(past_len, S)[:, None]
    k_pos = np.arange(S)[None, :]
    allowed = (k_pos <= q_pos) if causal else np.ones((T, S), dtype=bool)
    allowed = allowed[None, None]  # (1, 1, T, S)
    if attention_mask is not None:
        allowed = allowed & np.asarray(attention_mask).astype(bool)[:, None, None, :]
    return allowed | (k_pos == q_pos)[None, None]


def cache_bias(attention_mask, start, T):
    """Boolean mask (B, 1, T, L) over a static cache's L slots for queries at slots ``start``..: causal, real
    tokens of ``attention_mask`` (B, L) only, and each query always itself (no NaN on padding)."""
    q_pos = (start + np.arange(T))[:, None]
    k_pos = np.arange(attention_mask.shape[1])[None, :]
    allowed = (k_pos <= q_pos)[None, None] & attention_mask.astype(bool)[:, None, None, :]
    return allowed | (k_pos == q_pos)[None, None]


def rotary(position_ids, head_dim, theta):
    """RoPE's (cos, sin), each (B, 1, T, head_dim), for ``position_ids`` (B, T), in float64: Hugging Face's
    convention, the frequencies ``theta ** (-2j / head_dim)`` repeated for both halves of a head."""
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2) / head_dim)
    angles = position_ids[:, None, :, None] * inv_freq  # (B, 1, T, head_dim / 2)
    angles = np.concatenate([angles, angles], axis=-1)
    return np.cos(angles), np.sin(angles)


def rotate(x, cos, sin):
    """Rotary position embedding of heads ``x`` (B, h, T, hs): ``x * cos + rotate_half(x) * sin``, rotate_half
    turning (x1, x2) into (-x2, x1) over the halves of each head, as Hugging Face's Llama (so its weights load)."""
    x1, x2 = np.split(x, 2, axis=-1)
    return x * cos + np.concatenate([-x2, x1], axis=-1) * sin


def last_token(x, attention_mask):
    """Hidden state of each row's last real (mask 1) token; the last position without a mask."""
    if attention_mask is None:
        return x[:, -1]
    last = (np.arange(x.shape[1]) * np.asarray(attention_mask)).argmax(axis=-1)
    return x[np.arange(x.shape[0]), last]


def mean_pool(x, attention_mask):
    """Mean of hidden states over real (mask 1) tokens."""
    if attention_mask is None:
        return x.mean(axis=1)
    m = np.asarray(attention_mask).astype(x.dtype)[:, :, None]  # (B, T, 1)
    return (x * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1.0)
