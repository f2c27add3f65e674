"""ContextSSL end to end on tiny shapes (convnet, 32 px)."""

from __future__ import annotations

import pytest
import torch

from ctxssl_cli.losses import aux_loss, info_nce
from ctxssl_cli.model import ContextSSL, pair_attention_mask

N_SEQ, N_PAIRS, A = 2, 4, 6
N = N_SEQ * N_PAIRS


def tiny_model(**kw) -> ContextSSL:
    torch.manual_seed(0)
    return ContextSSL("convnet", action_dim=A, n_layer=2, n_head=2, n_embd=32, aux_hidden=16, **kw)


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(N, 3, 32, 32, generator=g), torch.randn(N, 3, 32, 32, generator=g),
            torch.randn(N, A, generator=g))


def test_shapes_and_attributes():
    model = tiny_model()
    x, y, a = batch()
    assert model.feature_dim == 256 and model.action_dim == A
    assert model.transformer.in_dim == 256 + A and model.transformer.out_dim == 256
    h = model.encode(x)
    assert h.shape == (N, 256)
    mask = pair_attention_mask(N_SEQ, N_PAIRS, 0.9, torch.Generator().manual_seed(0))
    z_x, z_y = model.forward_pairs(h, model.encode(y), a, N_PAIRS, mask)
    assert z_x.shape == z_y.shape == (N, 256)
    assert model.predict_latents(z_x).shape == (N, A)


def test_make_tokens_layout():
    model = tiny_model()
    h_x, h_y, a = torch.randn(N, 256), torch.randn(N, 256), torch.randn(N, A)
    tok = model.make_tokens(h_x, h_y, a, N_PAIRS)
    assert tok.shape == (N_SEQ, 2 * N_PAIRS, 256 + A)
    for k in range(N):
        s, p = divmod(k, N_PAIRS)
        assert torch.equal(tok[s, 2 * p], torch.cat([h_x[k], a[k]]))
        assert torch.equal(tok[s, 2 * p + 1], torch.cat([h_y[k], torch.zeros(A)]))
    with pytest.raises(ValueError):
        model.make_tokens(h_x, h_y, a, 3)  # 8 pairs do not split into sequences of 3


def test_forward_pairs_reads_out_in_input_order():
    model = tiny_model().eval()
    h_x, h_y, a = torch.randn(N, 256), torch.randn(N, 256), torch.randn(N, A)
    mask = pair_attention_mask(N_SEQ, N_PAIRS, 0.0, None)
    z_x, z_y = model.forward_pairs(h_x, h_y, a, N_PAIRS, mask)
    out = model.transformer(model.make_tokens(h_x, h_y, a, N_PAIRS), mask)  # (S, T, F)
    assert torch.equal(z_x, out[:, 0::2].reshape(N, -1)) and torch.equal(z_y, out[:, 1::2].reshape(N, -1))


def test_predict_latents_uses_normalised_outputs():
    model = tiny_model()
    z = torch.randn(5, 256)
    assert torch.allclose(model.predict_latents(z), model.predict_latents(7 * z), atol=1e-6)


def test_aux_norm_rms_feeds_the_predictor_unit_rms_inputs():
    l2, rms = tiny_model(), tiny_model(aux_norm="rms")  # same seed: same weights
    z = torch.randn(N, 256)
    u = torch.nn.functional.normalize(z, dim=-1)
    assert torch.allclose(l2.predict_latents(z), l2.aux_predictor(u), atol=1e-6)
    assert torch.allclose(rms.predict_latents(z), rms.aux_predictor(u * 16.0), atol=1e-5)  # sqrt(256) = 16
    assert torch.allclose(rms.predict_latents(z), rms.predict_latents(3 * z), atol=1e-5)  # still scale-free
    with pytest.raises(ValueError, match="aux_norm"):
        tiny_model(aux_norm="l1")


def test_gradients_reach_encoder_transformer_and_aux_predictor():
    model = tiny_model().train()
    x, y, a = batch()
    mask = pair_attention_mask(N_SEQ, N_PAIRS, 0.5, torch.Generator().manual_seed(0))
    out = model(x, y, a, N_PAIRS, mask)
    assert out.z_x.shape == (N, 256) and out.h_y.shape == (N, 256) and out.pred_y.shape == (N, A)
    revealed = torch.tensor([True] * 4 + [False] * 2)
    target = torch.randn(N, A)
    loss = info_nce(out.z_x, out.z_y) + 5.0 * (aux_loss(out.pred_x, target, revealed)
                                               + aux_loss(out.pred_y, target, revealed))
    loss.backward()
    for part in (model.encoder, model.transformer, model.aux_predictor):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


def test_forward_matches_separate_calls():
    model = tiny_model().eval()
    x, y, a = batch()
    mask = pair_attention_mask(N_SEQ, N_PAIRS, 0.0, None)
    out = model(x, y, a, N_PAIRS, mask)
    z_x, z_y = model.forward_pairs(model.encode(x), model.encode(y), a, N_PAIRS, mask)
    assert torch.allclose(out.z_x, z_x, atol=1e-5) and torch.allclose(out.z_y, z_y, atol=1e-5)
    assert torch.allclose(out.pred_x, model.predict_latents(z_x), atol=1e-5)


def test_forward_is_deterministic_for_a_generator_seed():
    x, y, a = batch()
    runs = []
    for _ in range(2):
        model = tiny_model().train()  # BatchNorm in training mode uses batch statistics: still deterministic
        mask = pair_attention_mask(N_SEQ, N_PAIRS, 0.9, torch.Generator().manual_seed(42))
        runs.append(model(x, y, a, N_PAIRS, mask))
    assert all(torch.equal(u, v) for u, v in zip(runs[0], runs[1]))
    other = pair_attention_mask(N_SEQ, N_PAIRS, 0.9, torch.Generator().manual_seed(43))
    assert not torch.equal(model(x, y, a, N_PAIRS, other).z_x, runs[0].z_x)


@pytest.mark.parametrize("n_ctx_pairs", [0, 1, 3])
def test_context_cache_and_queries_match_the_full_sequence(n_ctx_pairs):
    model = tiny_model().eval()
    g = torch.Generator().manual_seed(n_ctx_pairs)
    h_x, h_y = torch.randn(n_ctx_pairs, 256, generator=g), torch.randn(n_ctx_pairs, 256, generator=g)
    a = torch.randn(n_ctx_pairs, A, generator=g)
    a[:, 4:] = 0  # a "rotation" context: colour components zeroed
    cache = model.build_context(h_x, h_y, a)
    assert cache.length == 2 * n_ctx_pairs
    q = torch.randn(3, 256, generator=g)
    q_action = torch.randn(3, A, generator=g)
    z0 = model.embed_queries(q, None, cache)
    assert torch.allclose(z0, model.embed_queries(q, torch.zeros(3, A), cache), atol=1e-6)
    z1 = model.embed_queries(q, q_action, cache)
    for i in range(3):
        # the query as the x token of one more pair after the context, with the deterministic mask
        hx = torch.cat([h_x, q[i:i + 1]])
        hy = torch.cat([h_y, torch.zeros(1, 256)])
        for act, z in ((torch.zeros(1, A), z0), (q_action[i:i + 1], z1)):
            mask = pair_attention_mask(1, n_ctx_pairs + 1, 0.0, None)
            zx, _ = model.forward_pairs(hx, hy, torch.cat([a, act]), n_ctx_pairs + 1, mask)
            assert torch.allclose(z[i], zx[-1], atol=1e-5)


def test_channels_last_model_runs():
    model = tiny_model(channels_last=True).eval()
    x, _, _ = batch()
    ref = tiny_model().eval().encode(x)
    assert torch.allclose(model.encode(x), ref, atol=1e-5)
