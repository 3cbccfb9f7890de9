"""GPT-2 and the Llama family in PyTorch: causal LM and classifier, one block code for both (the Config picks the
norm, MLP, positions, key/value heads and biases). Mirrors ``llmdual/backends/keras/model.py`` class for class.

Module attribute names are the canonical weight names (``wte``, ``h.0.attn.c_attn``, ...), so
``model.get_parameter(canonical_name)`` finds every weight; only the ``[in, out]`` matrices are stored
transposed (``nn.Linear`` keeps ``[out, in]``), see ``weights.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmdual.core import validate
from llmdual.core.config import Config

KVCache = list[tuple[torch.Tensor, torch.Tensor]]


class Attention(nn.Module):
    """Multi-head (or grouped-query: fewer key/value heads) self-attention with a fused qkv projection, rotary
    positions when given ``rope``, and an optional KV cache: ``past`` is grown by concatenation, or with ``start``
    it is a static cache whose buffers take the new keys and values in place."""

    def __init__(self, config: Config):
        super().__init__()
        C = config.d_model
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.kv_heads, config.head_dim
        self.c_attn = nn.Linear(C, config.qkv_width, bias=config.qkv_biased)
        self.c_proj = nn.Linear(C, C, bias=config.attn_bias)
        self.attn_dropout = nn.Dropout(config.dropout)  # on the attention probabilities, inside SDPA
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, attn_mask=None, causal=True, past=None, start=None, rope=None):
        B, T, C = x.shape
        kv, hs = self.n_kv_heads * self.head_dim, self.head_dim
        q, k, v = self.c_attn(x).split([C, kv, kv], dim=2)
        q = q.view(B, T, self.n_heads, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_kv_heads, hs).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, self.n_kv_heads, hs).transpose(1, 2)
        if rope is not None:
            q, k = rotate(q, *rope), rotate(k, *rope)
        if start is not None:
            slots = start + torch.arange(T, device=x.device)
            k = past[0].index_copy_(2, slots, k.to(past[0].dtype)).to(q.dtype)  # (B, nkv, L, hs)
            v = past[1].index_copy_(2, slots, v.to(past[1].dtype)).to(q.dtype)
        elif past is not None:
            k = torch.cat([past[0], k], dim=2)  # (B, nkv, T_past + T, hs)
            v = torch.cat([past[1], v], dim=2)
        dropout_p = self.attn_dropout.p if self.training else 0.0  # SDPA drops the probabilities itself
        gqa = self.n_kv_heads != self.n_heads  # SDPA shares each key/value head among its group of query heads
        if attn_mask is None:
            # No padding: the fused causal kernel without a cache; a single new token with a cache needs no mask
            # at all. Decided by the cache, never by T, so a compiled graph keeps the sequence length dynamic.
            is_causal = causal and past is None
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=is_causal, enable_gqa=gqa)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, enable_gqa=gqa)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads side by side
        return self.resid_dropout(self.c_proj(y)), (k, v)


class MLP(nn.Module):
    """Position-wise feed-forward: c_fc, GELU (tanh approximation, as GPT-2) or SwiGLU (c_fc's gate and up halves:
    ``silu(gate) * up``, as Llama), c_proj."""

    def __init__(self, config: Config):
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        self.c_fc = nn.Linear(config.d_model, config.fc_width, bias=config.mlp_bias)
        self.c_proj = nn.Linear(config.d_ff, config.d_model, bias=config.mlp_bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        h = self.c_fc(x)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h, approximate="tanh")
        return self.dropout(self.c_proj(h))


def norm(config: Config) -> nn.Module:
    """The config's normalisation: LayerNorm (GPT-2) or RMSNorm (Llama)."""
    if config.norm == "rms":
        return nn.RMSNorm(config.d_model, eps=config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: Config):
        super().__init__()
        self.ln_1 = norm(config)
        self.attn = Attention(config)
        self.ln_2 = norm(config)
        self.mlp = MLP(config)

    def forward(self, x, attn_mask=None, causal=True, past=None, start=None, rope=None):
        """Block output, its (k, v) cache, and the residual stream between attention and MLP (for tracing)."""
        a, present = self.attn(self.ln_1(x), attn_mask=attn_mask, causal=causal, past=past, start=start, rope=rope)
        mid = x + a
        return mid + self.mlp(self.ln_2(mid)), present, mid


class Transformer(nn.Module):
    """Embeddings, the stack of blocks and the final norm shared by the LM and the classifier."""

    causal = True
    lora = None  # the model's llmdual.core.lora_spec.LoraSpec once it has adapters (see lora.py)

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        if config.positions == "learned":
            self.wpe = nn.Embedding(config.max_seq_len, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layers)])
        self.ln_f = norm(config)

    def check_inputs(self, input_ids, attention_mask=None, past=None, position_ids=None) -> None:
        """Refuse bad ids, mask or length with ``llmdual.core.validate`` (eager only: traced values are unknown)."""
        if _is_eager():
            past_len = 0 if past is None else past[0][0].shape[2]
            validate.check_inputs(_numpy(input_ids), self.config, _numpy(attention_mask), past_len, _numpy(position_ids))

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
            position_ids = (past_len + torch.arange(T, device=input_ids.device)).unsqueeze(0)
        rope = None
        if self.config.positions == "learned":
            x = self.drop(self.wte(input_ids) + self.wpe(position_ids))
        else:
            x = self.drop(self.wte(input_ids))
            rope = rotary(position_ids, self.config.head_dim, self.config.rope_theta, x.dtype)
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
            self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)

    def head(self, x):
        weight = self.wte.weight if self.config.tie_embeddings else self.lm_head.weight
        return F.linear(x, weight)

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

        ``cache``: per-layer ``(k, v)`` buffers (B, kv_heads, L, head_dim), written in place at slots ``start``
        (a 0-d int tensor) onwards; ``attention_mask`` (B, L) marks real tokens among the slots (unwritten slots
        are never attended); ``position_ids`` (B, T). Inputs are not validated here: the decoder checks them.
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
        self.score = nn.Linear(config.d_model, config.num_classes, bias=not self.causal)

    def forward(self, input_ids, attention_mask=None):
        """Class logits (B, num_classes)."""
        x, _ = self.hidden(input_ids, attention_mask)
        return self.score(last_token(x, attention_mask) if self.causal else mean_pool(x, attention_mask))


def attention_bias(attention_mask, T, past_len, causal):
    """Boolean mask (B or 1, 1, T, past_len + T), True where a query may attend; None when no mask is needed.

    Each query may always attend to itself, so a row is never fully masked (no NaN on padding).
    """
    if attention_mask is None and (not causal or past_len == 0 or T == 1):
        return None  # plain causal or full attention: handled by the kernel's flags
    S = past_len + T
    q_pos = torch.arange(past_len, S).unsqueeze(1)
    k_pos = torch.arange(S).unsqueeze(0)
    allowed = (k_pos <= q_pos) if causal else torch.ones(T, S, dtype=torch.bool)
    allowed = allowed[None, None]  # (1, 1, T, S)
    if attention_mask is not None:
        allowed = allowed.to(attention_mask.device) & attention_mask.bool()[:, None, None, :]
    return allowed | (k_pos == q_pos)[None, None].to(allowed.device)


def cache_bias(attention_mask, start, T):
    """Boolean mask (B, 1, T, L) over a static cache's L slots for queries at slots ``start``..: causal, real
    tokens of ``attention_mask`` (B, L) only, and each query always itself (no NaN on padding)."""
    q_pos = (start + torch.arange(T, device=attention_mask.device)).unsqueeze(1)
    k_pos = torch.arange(attention_mask.shape[1], device=attention_mask.device).unsqueeze(0)
    allowed = (k_pos <= q_pos)[None, None] & attention_mask.bool()[:, None, None, :]
    return allowed | (k_pos == q_pos)[None, None]


def rotary(position_ids, head_dim, theta, dtype):
    """RoPE's (cos, sin), each (B, 1, T, head_dim), for ``position_ids`` (B, T): Hugging Face's convention, the
    frequencies ``theta ** (-2j / head_dim)`` computed in float32 and repeated for both halves of a head."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=position_ids.device).float() / head_dim))
    angles = position_ids[:, None, :, None].float() * inv_freq  # (B, 1, T, head_dim / 2)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate(x, cos, sin):
    """Rotary position embedding of heads ``x`` (B, h, T, hs): ``x * cos + rotate_half(x) * sin``, rotate_half
    turning (x1, x2) into (-x2, x1) over the halves of each head, as Hugging Face's Llama (so its weights load)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def last_token(x, attention_mask):
    """Hidden state of each row's last real (mask 1) token; the last position without a mask."""
    if attention_mask is None:
        return x[:, -1]
    positions = torch.arange(x.shape[1], device=x.device)
    last = (positions * attention_mask.to(positions.dtype)).argmax(dim=-1)
    return x[torch.arange(x.shape[0], device=x.device), last]


def mean_pool(x, attention_mask):
    """Mean of hidden states over real (mask 1) tokens."""
    if attention_mask is None:
        return x.mean(dim=1)
    m = attention_mask.to(x.dtype).unsqueeze(-1)  # (B, T, 1)
    return (x * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


def _is_eager() -> bool:
    """False while tracing, exporting or compiling, where input values are not available."""
    return not (torch.jit.is_tracing() or torch.compiler.is_compiling())


def _numpy(x):
    """A tensor's values as numpy (None stays None)."""
    return None if x is None else x.detach().cpu().numpy()


def cross_entropy(logits, targets):
    """Mean cross-entropy over positions whose target is not -100 (PyTorch's ignore index)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100)
