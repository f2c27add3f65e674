"""The context transformer ("contextual world model", SPEC §2), its attention mask and its KV cache.

A sequence holds the tokens of n_pairs pairs in the order x_1, y_1, x_2, y_2, ... (T = 2 * n_pairs). The
model is a GPT-2 pre-LayerNorm decoder with no positional embedding: a token's only notion of order is
which tokens its mask lets it see.

Mask (True = may attend): causal; y_k never sees its own source x_k (that would let z(y_k) copy the
prediction's input, the "copy shortcut"); so inside its own pair a token sees only itself. During training,
for every query token, every earlier pair (x_j and y_j together) is hidden independently with probability
mask_prob ("context masking", paper best 0.9). A token always sees itself, so no attention row is empty.
The published model draws that mask anew in every layer (`layer_attention_masks`: one (T, T/2) draw per layer,
shared by every sequence and head of the step); `pair_attention_mask` draws one mask per sequence instead,
reused by every layer (spec key train.mask_draw).

Evaluation (SPEC §4) runs a context of C tokens once (`build_cache`), keeps every layer's keys and values,
and then embeds any number of query tokens against it (`forward_queries`): each query sits right after the
context, sees all of it and itself, and never sees another query.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def pair_attention_mask(n_seq: int, n_pairs: int, mask_prob: float, generator: torch.Generator | None,
                        device=None) -> Tensor:
    """Boolean attention masks (n_seq, T, T), T = 2*n_pairs, True = query row may attend to key column.

    With mask_prob 0 every sequence gets the deterministic mask (no random numbers are drawn). Otherwise
    one uniform number per (sequence, query token, pair) is drawn, as torch.rand((n_seq, T, n_pairs),
    generator=generator) on the generator's device (the global RNG on `device` when generator is None);
    pair j is hidden from query i when that number is < mask_prob, for earlier pairs only. The mask lives
    on `device` (default: the generator's device, else the CPU).
    """
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
    if device is None and generator is not None:
        device = generator.device  # a CUDA generator gives a CUDA mask unless told otherwise
    T = 2 * n_pairs
    earlier, itself = _pair_structure(n_pairs, device)  # (T, T) each
    if mask_prob == 0.0:
        return (earlier | itself).expand(n_seq, T, T).clone()  # (S, T, T)
    draw_device = generator.device if generator is not None else device
    u = torch.rand((n_seq, T, n_pairs), generator=generator, device=draw_device).to(device)  # (S, T, P)
    keep = (u >= mask_prob).repeat_interleave(2, dim=2)  # (S, T, T): both tokens of a pair share one draw
    return (earlier & keep) | itself  # (S, T, T)


def _pair_structure(n_pairs: int, device) -> tuple[Tensor, Tensor]:
    """(T, T) bool: key's pair strictly precedes the query's pair; and the diagonal."""
    idx = torch.arange(2 * n_pairs, device=device)
    return (idx[None, :] // 2) < (idx[:, None] // 2), idx[None, :] == idx[:, None]


def layer_attention_masks(n_layer: int, n_pairs: int, mask_prob: float, generator: torch.Generator | None,
                          device=None) -> Tensor:
    """The published model's context masking: (n_layer, 1, T, T) bool, one independent draw per layer.

    Layer l draws torch.rand((T, n_pairs)) (layers in order, from `generator`, on its device) and hides pair
    j from query i where that number is < mask_prob, for earlier pairs only; the same mask serves every
    sequence and head of the step (the size-1 axis broadcasts over sequences). The fixed structure (causal
    over pairs, y_k never sees x_k, a token always sees itself) is kept in every layer.
    """
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
    if n_layer < 1:
        raise ValueError(f"n_layer must be >= 1, got {n_layer}")
    if device is None and generator is not None:
        device = generator.device
    earlier, itself = _pair_structure(n_pairs, device)
    T = 2 * n_pairs
    if mask_prob == 0.0:
        return (earlier | itself).expand(n_layer, 1, T, T).clone()
    draw_device = generator.device if generator is not None else device
    u = torch.rand((n_layer, T, n_pairs), generator=generator, device=draw_device).to(device)  # (L, T, P)
    keep = (u >= mask_prob).repeat_interleave(2, dim=2)  # (L, T, T): both tokens of a pair share one draw
    return ((earlier & keep) | itself)[:, None]  # (L, 1, T, T)


@dataclass
class KVCache:
    """Per-layer keys and values of one context sequence: k[l], v[l] are (n_head, C, head_size)."""

    k: list[Tensor]
    v: list[Tensor]

    @property
    def length(self) -> int:
        """Number of cached context tokens C."""
        return self.k[0].shape[1]


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
        self.n_head = n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)  # q, k, v for all heads at once
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)  # residual output projection
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        S, T, E = x.shape
        q, k, v = self.c_attn(x).split(E, dim=2)  # 3 x (S, T, E)
        return tuple(t.view(S, T, self.n_head, E // self.n_head).transpose(1, 2) for t in (q, k, v))  # (S, nh, T, hs)

    def forward(self, x: Tensor, attn_mask: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x (S, T, E), attn_mask (S or 1, 1, T, T) bool -> (S, T, E) and this layer's (k, v), (S, nh, T, hs)."""
        S, T, E = x.shape
        q, k, v = self._heads(x)  # (S, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)  # (S, nh, T, hs)
        y = y.transpose(1, 2).reshape(S, T, E)  # (S, T, E) heads side by side
        return self.resid_dropout(self.c_proj(y)), (k, v)

    def forward_cached(self, x: Tensor, k_ctx: Tensor, v_ctx: Tensor) -> Tensor:
        """Independent queries against a cached context: x (Q, E), k_ctx/v_ctx (nh, C, hs) -> (Q, E).

        The (Q, nh, 1, C+1) attention is computed as context scores plus a self score, so the cache is
        never copied once per query.
        """
        Q, E = x.shape
        q, k, v = (t[:, :, 0] for t in self._heads(x[:, None, :]))  # (Q, nh, hs) each
        scale = 1.0 / math.sqrt(q.shape[-1])
        s_ctx = torch.einsum("qhd,hcd->qhc", q, k_ctx) * scale  # (Q, nh, C)
        s_self = (q * k).sum(-1, keepdim=True) * scale  # (Q, nh, 1)
        att = torch.cat([s_ctx, s_self], dim=-1).softmax(dim=-1)  # (Q, nh, C+1)
        att = F.dropout(att, self.dropout, self.training)
        C = k_ctx.shape[1]
        y = torch.einsum("qhc,hcd->qhd", att[..., :C], v_ctx) + att[..., C:] * v  # (Q, nh, hs)
        return self.resid_dropout(self.c_proj(y.reshape(Q, E)))


class MLP(nn.Module):
    def __init__(self, n_embd: int, dropout: float, bias: bool):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)  # residual output projection
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, bias)
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = MLP(n_embd, dropout, bias)

    def forward(self, x: Tensor, attn_mask: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        a, kv = self.attn(self.ln_1(x), attn_mask)
        x = x + a
        return x + self.mlp(self.ln_2(x)), kv

    def forward_cached(self, x: Tensor, k_ctx: Tensor, v_ctx: Tensor) -> Tensor:
        x = x + self.attn.forward_cached(self.ln_1(x), k_ctx, v_ctx)
        return x + self.mlp(self.ln_2(x))


class ContextTransformer(nn.Module):
    """GPT-2 pre-LN decoder over pair tokens (SPEC §2): read-in, n_layer blocks, final LN, read-out.

    No positional embedding. Init as GPT-2: every Linear normal(0, 0.02) with zero bias, and the residual
    output projections (attn.c_proj, mlp.c_proj) normal(0, 0.02/sqrt(2*n_layer)) so the residual stream's
    variance does not grow with depth.
    """

    def __init__(self, in_dim: int, out_dim: int, n_layer: int, n_head: int, n_embd: int, dropout: float = 0.0,
                 bias: bool = True):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.n_layer, self.n_head, self.n_embd = n_layer, n_head, n_embd
        self.read_in = nn.Linear(in_dim, n_embd, bias=bias)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout, bias) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, bias=bias)
        self.read_out = nn.Linear(n_embd, out_dim, bias=bias)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, tokens: Tensor, attn_mask: Tensor) -> Tensor:
        """tokens (S, T, in_dim), attn_mask bool -> outputs (S, T, out_dim).

        attn_mask (S or 1, T, T): one mask for every layer; (n_layer, S or 1, T, T): layer l uses attn_mask[l]
        (`layer_attention_masks`). Every head shares its layer's mask."""
        per_layer = attn_mask.dim() == 4
        if (tokens.dim() != 3 or attn_mask.dim() not in (3, 4) or attn_mask.shape[-2:] != (tokens.shape[1],) * 2
                or (per_layer and attn_mask.shape[0] != self.n_layer)):
            raise ValueError(f"expected tokens (S, T, D) and mask (S|1, T, T) or ({self.n_layer}, S|1, T, T), got "
                             f"{tuple(tokens.shape)} and {tuple(attn_mask.shape)}")
        x = self.drop(self.read_in(tokens))  # (S, T, E)
        for layer, block in enumerate(self.blocks):
            mask = attn_mask[layer] if per_layer else attn_mask  # (S|1, T, T)
            x, _ = block(x, mask[:, None])  # (S|1, 1, T, T): the same mask for every head
        return self.read_out(self.ln_f(x))  # (S, T, out_dim)

    def build_cache(self, context: Tensor) -> KVCache:
        """Run one context sequence (C, in_dim), C even (may be 0), once with the deterministic pair mask;
        return every layer's keys and values."""
        if context.dim() != 2 or context.shape[0] % 2:
            raise ValueError(f"context must be (C, in_dim) with C even, got {tuple(context.shape)}")
        C = context.shape[0]
        hs = self.n_embd // self.n_head
        if C == 0:
            empty = self.read_in.weight.new_zeros(self.n_head, 0, hs)  # (nh, 0, hs)
            return KVCache(k=[empty] * self.n_layer, v=[empty] * self.n_layer)
        x = self.drop(self.read_in(context))[None]  # (1, C, E)
        mask = pair_attention_mask(1, C // 2, 0.0, None, device=context.device)[:, None]  # (1, 1, C, C)
        ks, vs = [], []
        for block in self.blocks:
            x, (k, v) = block(x, mask)
            ks.append(k[0])  # (nh, C, hs)
            vs.append(v[0])
        return KVCache(k=ks, v=vs)

    def forward_queries(self, queries: Tensor, cache: KVCache) -> Tensor:
        """queries (Q, in_dim), each placed right after the cached context, seeing it and itself -> (Q, out_dim)."""
        if queries.dim() != 2 or len(cache.k) != self.n_layer:
            raise ValueError(f"expected queries (Q, in_dim) and a {self.n_layer}-layer cache, got "
                             f"{tuple(queries.shape)} and {len(cache.k)} layers")
        x = self.drop(self.read_in(queries))  # (Q, E)
        for block, k_ctx, v_ctx in zip(self.blocks, cache.k, cache.v):
            x = block.forward_cached(x, k_ctx, v_ctx)
        return self.read_out(self.ln_f(x))  # (Q, out_dim)
