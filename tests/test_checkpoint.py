"""Checkpoints: safetensors round trip, strict loading, tamper and pickle detection, atomic writes."""

import pickle

import pytest
import torch
from torch import nn

from ctxssl_cli.checkpoint import (load_checkpoint, restore_model, restore_optimizer, restore_rng,
                                   save_checkpoint)
from ctxssl_cli.errors import CtxsslError


def _model(width=4):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, width), nn.BatchNorm1d(width), nn.Linear(width, 2))


def _trained(steps=3):
    m = _model()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(steps):
        loss = m(torch.randn(8, 3)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m, opt


def test_round_trip_restores_model_optimizer_and_rng(tmp_path):
    m, opt = _trained()
    path = tmp_path / "checkpoint.safetensors"
    torch.manual_seed(123)
    save_checkpoint(path, m, opt, "name: x\n", {"step": 3, "epoch": 0})
    expected_next = torch.rand(3)
    ck = load_checkpoint(tmp_path)  # a run folder works too
    assert ck.step == 3 and ck.spec_yaml == "name: x\n"
    m2 = _model()
    opt2 = torch.optim.Adam(m2.parameters(), lr=1e-2, weight_decay=1e-3)
    restore_model(m2, ck)
    restore_optimizer(opt2, ck)
    for a, b in zip(m.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    # one more identical step on both gives identical weights (optimizer moments restored exactly)
    x = torch.randn(8, 3)
    for mm, oo in ((m, opt), (m2, opt2)):
        loss = mm(x).pow(2).mean()
        oo.zero_grad()
        loss.backward()
        oo.step()
    for a, b in zip(m.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    restore_rng(ck)
    assert torch.equal(torch.rand(3), expected_next)


def test_strict_loading_names_the_mismatch(tmp_path):
    m, opt = _trained()
    save_checkpoint(tmp_path / "c.safetensors", m, opt, "", {"step": 1})
    with pytest.raises(CtxsslError, match="does not match the run spec.*shape"):
        restore_model(_model(width=5), load_checkpoint(tmp_path / "c.safetensors"))
    with pytest.raises(CtxsslError, match="missing"):
        restore_model(nn.Sequential(_model(), nn.Linear(2, 2)), load_checkpoint(tmp_path / "c.safetensors"))


def test_tampered_file_fails_integrity_check(tmp_path):
    m, opt = _trained()
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, m, opt, "", {"step": 1})
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF  # flip bits inside the last tensor's data
    path.write_bytes(bytes(raw))
    with pytest.raises(CtxsslError, match="integrity"):
        load_checkpoint(path)


def test_truncated_file_and_renamed_pickle_are_refused(tmp_path):
    m, opt = _trained()
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, m, opt, "", {"step": 1})
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CtxsslError, match="not a readable safetensors"):
        load_checkpoint(path)

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps({"model": Evil()}))
    with pytest.raises(CtxsslError, match="not a readable safetensors"):
        load_checkpoint(evil)
    assert not marker.exists(), "the pickle must never be executed"


def test_other_safetensors_file_is_not_a_checkpoint(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(CtxsslError, match="not a ctxssl checkpoint"):
        load_checkpoint(tmp_path / "x.safetensors")


def test_write_is_atomic_no_temp_left(tmp_path):
    m, opt = _trained()
    save_checkpoint(tmp_path / "checkpoint.safetensors", m, opt, "", {"step": 1})
    save_checkpoint(tmp_path / "checkpoint.safetensors", m, opt, "", {"step": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.safetensors"]
    assert load_checkpoint(tmp_path).step == 2


def test_missing_checkpoint_messages(tmp_path):
    with pytest.raises(CtxsslError, match="has no checkpoint"):
        load_checkpoint(tmp_path)
    with pytest.raises(CtxsslError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")
