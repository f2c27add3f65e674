"""The pair attention mask, the context transformer (init, no positional embedding) and its KV cache."""

from __future__ import annotations

import math

import pytest
import torch

from ctxssl_cli.model.context import ContextTransformer, layer_attention_masks, pair_attention_mask


def brute_force_mask(n_seq: int, n_pairs: int, hidden=None) -> torch.Tensor:
    """The rule of SPEC §2 written out: hidden[s, i, m] says pair m is hidden from query token i."""
    T = 2 * n_pairs
    mask = torch.zeros(n_seq, T, T, dtype=torch.bool)
    for s in range(n_seq):
        for i in range(T):
            for j in range(T):
                if j == i:
                    mask[s, i, j] = True  # a token always sees itself
                elif j > i:
                    mask[s, i, j] = False  # causal
                elif j // 2 == i // 2:
                    mask[s, i, j] = False  # y_k never sees x_k
                else:
                    mask[s, i, j] = not (hidden is not None and hidden[s, i, j // 2])
    return mask


def tiny(n_layer=2, in_dim=10, out_dim=6, n_embd=16, n_head=2, dropout=0.0) -> ContextTransformer:
    torch.manual_seed(0)
    return ContextTransformer(in_dim, out_dim, n_layer, n_head, n_embd, dropout).eval()


# -- mask ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_pairs", [1, 2, 5])
def test_deterministic_mask_matches_brute_force(n_pairs):
    expected = brute_force_mask(3, n_pairs)
    assert torch.equal(pair_attention_mask(3, n_pairs, 0.0, None), expected)
    assert torch.equal(pair_attention_mask(3, n_pairs, 0.0, torch.Generator().manual_seed(1)), expected)


def test_random_mask_matches_brute_force_with_the_same_draws():
    n_seq, n_pairs, p = 2, 6, 0.5
    mask = pair_attention_mask(n_seq, n_pairs, p, torch.Generator().manual_seed(7))
    u = torch.rand((n_seq, 2 * n_pairs, n_pairs), generator=torch.Generator().manual_seed(7))
    assert torch.equal(mask, brute_force_mask(n_seq, n_pairs, hidden=u < p))


def test_random_mask_structure_and_rate():
    n_seq, n_pairs, p = 64, 16, 0.7
    T = 2 * n_pairs
    mask = pair_attention_mask(n_seq, n_pairs, p, torch.Generator().manual_seed(0))
    assert mask.shape == (n_seq, T, T) and mask.dtype == torch.bool
    base = brute_force_mask(1, n_pairs)[0]
    assert not (mask & ~base).any()  # never more than causal + y blind to x
    assert mask.diagonal(dim1=1, dim2=2).all()  # self always visible
    assert not mask[:, 1::2, 0::2].diagonal(dim1=1, dim2=2).any()  # y_k never sees x_k
    # hidden earlier pairs come in both-token units
    pair_vis = mask[:, :, 0::2]  # (S, T, P) visibility of each pair's x token
    earlier = (torch.arange(n_pairs)[None, :] < (torch.arange(T) // 2)[:, None]).expand_as(pair_vis)
    assert torch.equal(pair_vis[earlier], mask[:, :, 1::2][earlier])
    # rate of hiding over all (sequence, query, earlier pair) slots ~ p
    rate = (~pair_vis[earlier]).float().mean().item()
    assert abs(rate - p) < 0.01
    # independent per query token: x_k and y_k of the same pair do not share their draws
    agree = (pair_vis[:, 0::2] == pair_vis[:, 1::2])[earlier[:, 0::2]].float().mean().item()
    assert abs(agree - (p * p + (1 - p) * (1 - p))) < 0.02


def test_random_mask_seeded_and_global_rng():
    a = pair_attention_mask(4, 8, 0.9, torch.Generator().manual_seed(3))
    b = pair_attention_mask(4, 8, 0.9, torch.Generator().manual_seed(3))
    c = pair_attention_mask(4, 8, 0.9, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(5)
    d = pair_attention_mask(4, 8, 0.9, None)
    torch.manual_seed(5)
    assert torch.equal(d, pair_attention_mask(4, 8, 0.9, None))
    assert pair_attention_mask(2, 4, 1.0, None).sum() == 2 * 8  # everything earlier hidden: only self
    with pytest.raises(ValueError):
        pair_attention_mask(1, 2, 1.5, None)


# -- transformer -----------------------------------------------------------------------------------------

def test_forward_shapes_and_broadcast_mask():
    model = tiny()
    tokens = torch.randn(3, 8, 10)
    mask = pair_attention_mask(1, 4, 0.0, None)
    out = model(tokens, mask)
    assert out.shape == (3, 8, 6)
    assert torch.allclose(out, model(tokens, mask.expand(3, 8, 8)), atol=1e-6)
    with pytest.raises(ValueError):
        model(tokens, pair_attention_mask(1, 3, 0.0, None))


def test_init_statistics():
    n_layer, E = 4, 512
    model = ContextTransformer(64, 128, n_layer, 4, E)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert torch.all(p == 0), name
        elif ".ln_" in name or name.startswith("ln_"):
            assert torch.all(p == 1), name
        elif name.endswith("c_proj.weight"):
            assert abs(p.std().item() - 0.02 / math.sqrt(2 * n_layer)) < 0.0005, name
        else:  # read_in, c_attn, c_fc, read_out
            assert abs(p.std().item() - 0.02) < 0.001, name
            assert abs(p.mean().item()) < 0.001, name
    # no positional embedding: every parameter belongs to a Linear or a LayerNorm
    n_linear_ln = sum(p.numel() for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.LayerNorm))
                      for p in m.parameters(recurse=False))
    assert n_linear_ln == sum(p.numel() for p in model.parameters())


def test_no_positional_embedding_a_token_that_sees_only_itself_is_position_free():
    """With no positional embedding, a token whose mask row is self-only gives the same output wherever it
    stands (a learned position table would change it)."""
    model = tiny(n_layer=3)
    tokens = torch.randn(1, 10, 10)
    out = model(tokens, pair_attention_mask(1, 5, 0.0, None))
    alone = model(tokens.reshape(5, 2, 10), pair_attention_mask(1, 1, 0.0, None))  # each pair on its own
    assert torch.allclose(out[0, 0], alone[0, 0], atol=1e-6)  # x_1 sees only itself
    hidden_all = pair_attention_mask(1, 5, 1.0, None)  # every earlier pair hidden
    out_hidden = model(tokens, hidden_all)
    assert torch.allclose(out_hidden[0], alone.reshape(10, 6), atol=1e-5)


def test_permuting_earlier_pairs_one_layer_invariant_deeper_not():
    """What is true without positions: in one layer, the last pair's outputs depend on the *set* of earlier
    pairs only. With more layers the earlier tokens' own states depend on *their* prefixes, so the order of
    the earlier pairs matters (causal masking alone carries order)."""
    tokens = torch.randn(1, 10, 10)
    perm_pairs = [2, 0, 3, 1, 4]  # last pair stays last
    perm = torch.tensor([2 * p + t for p in perm_pairs for t in (0, 1)])
    mask = pair_attention_mask(1, 5, 0.0, None)
    one = tiny(n_layer=1)
    assert torch.allclose(one(tokens, mask)[0, 8:], one(tokens[:, perm], mask)[0, 8:], atol=1e-5)
    two = tiny(n_layer=2)
    assert not torch.allclose(two(tokens, mask)[0, 8:], two(tokens[:, perm], mask)[0, 8:], atol=1e-4)


def test_dropout_zero_train_equals_eval():
    model = tiny()
    tokens, mask = torch.randn(2, 6, 10), pair_attention_mask(2, 3, 0.0, None)
    ev = model(tokens, mask)
    assert torch.allclose(model.train()(tokens, mask), ev, atol=1e-6)


# -- KV cache --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("C", [0, 2, 6, 14])
def test_kv_cache_equals_full_forward(C):
    model = tiny(n_layer=3)
    g = torch.Generator().manual_seed(C)
    context = torch.randn(C, 10, generator=g)
    queries = torch.randn(5, 10, generator=g)
    cache = model.build_cache(context)
    assert cache.length == C and len(cache.k) == 3 and cache.k[0].shape == (2, C, 8)
    out = model.forward_queries(queries, cache)
    assert out.shape == (5, 6)
    for i in range(5):
        seq = torch.cat([context, queries[i:i + 1]])[None]  # (1, C+1, in): the query as the next x token
        full = model(torch.cat([seq, torch.zeros(1, 1, 10)], dim=1), pair_attention_mask(1, C // 2 + 1, 0.0, None))
        assert torch.allclose(out[i], full[0, C], atol=1e-5)
        # at a y position (after some x token it is blind to) the query gives the same output
        seq_y = torch.cat([context, torch.randn(1, 10), queries[i:i + 1]])[None]
        full_y = model(seq_y, pair_attention_mask(1, C // 2 + 1, 0.0, None))
        assert torch.allclose(out[i], full_y[0, C + 1], atol=1e-5)


def test_queries_do_not_influence_each_other():
    model = tiny()
    cache = model.build_cache(torch.randn(6, 10))
    queries = torch.randn(4, 10)
    out = model.forward_queries(queries, cache)
    changed = queries.clone()
    changed[0] = torch.randn(10) * 5
    out2 = model.forward_queries(changed, cache)
    assert not torch.allclose(out[0], out2[0])
    assert torch.allclose(out[1:], out2[1:], atol=1e-6)
    assert torch.allclose(model.forward_queries(queries[2:3], cache), out[2:3], atol=1e-6)


def test_cache_rejects_odd_context():
    model = tiny()
    with pytest.raises(ValueError):
        model.build_cache(torch.randn(3, 10))


def test_kv_cache_gradients_flow():
    model = tiny()
    context = torch.randn(4, 10, requires_grad=True)
    queries = torch.randn(3, 10, requires_grad=True)
    model.forward_queries(queries, model.build_cache(context)).sum().backward()
    assert context.grad.abs().sum() > 0 and queries.grad.abs().sum() > 0


# -- the published per-layer mask (train.mask_draw=per_layer) -------------------------------------------

def test_layer_masks_match_brute_force_with_independent_draws_per_layer():
    n_layer, n_pairs, p = 3, 5, 0.6
    masks = layer_attention_masks(n_layer, n_pairs, p, torch.Generator().manual_seed(9))
    assert masks.shape == (n_layer, 1, 2 * n_pairs, 2 * n_pairs) and masks.dtype == torch.bool
    g = torch.Generator().manual_seed(9)
    for layer in range(n_layer):  # layer by layer, in order, each its own (T, T/2) draw
        u = torch.rand((2 * n_pairs, n_pairs), generator=g)
        assert torch.equal(masks[layer], brute_force_mask(1, n_pairs, hidden=(u < p)[None]))
    assert not torch.equal(masks[0], masks[1])  # independent layers
    assert torch.equal(layer_attention_masks(2, 4, 0.0, None), brute_force_mask(1, 4).expand(2, 1, 8, 8))


def test_per_layer_masking_leaves_fewer_tokens_blind():
    """SPEC §5c: with one draw ~15.7% of y tokens see no context pair at block 128, mask 0.9; with per-layer
    draws a token is blind in every layer far less often (about 8% for 2 layers, 6% for 3)."""
    n_pairs, p = 64, 0.9
    seq = pair_attention_mask(400, n_pairs, p, torch.Generator().manual_seed(0))  # (S, T, T)
    other_pairs = ~torch.eye(2 * n_pairs, dtype=torch.bool)
    blind_seq = ~(seq & other_pairs).any(-1)[:, 1::2]  # (S, P) y tokens that see nothing but themselves
    lay = torch.stack([layer_attention_masks(3, n_pairs, p, torch.Generator().manual_seed(s))[:, 0]
                       for s in range(400)])  # (S, L, T, T)
    blind_all = (~(lay & other_pairs).any(-1)).all(1)[:, 1::2]  # blind in every layer
    assert 0.13 < blind_seq.float().mean() < 0.19
    assert 0.035 < blind_all.float().mean() < 0.08


def test_transformer_uses_each_layers_own_mask():
    torch.manual_seed(0)
    model = ContextTransformer(10, 6, n_layer=2, n_head=2, n_embd=8).eval()
    tokens = torch.randn(3, 8, 10)
    full, none = brute_force_mask(1, 4), brute_force_mask(1, 4, hidden=torch.ones(1, 8, 4, dtype=torch.bool))
    same = model(tokens, full)
    assert torch.equal(model(tokens, torch.stack([full, full])), same)  # (L, 1, T, T) == one mask for all
    mixed = model(tokens, torch.stack([full, none]))
    assert not torch.allclose(mixed, same) and not torch.allclose(mixed, model(tokens, none))
    with pytest.raises(ValueError):
        model(tokens, torch.stack([full, full, full]))  # one mask per layer, no more
