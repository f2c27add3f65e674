"""train.threads: the CPU thread governor (train/threads.py) — decisions on simulated CPU counters, pinning,
restoring, the spec key, and its line in train.log."""

import pytest
import torch

from ctxssl_cli.errors import CtxsslError
from ctxssl_cli.spec import load_spec
from ctxssl_cli.train import threads as T


def test_free_threads_rounds_the_free_cores_within_bounds():
    assert T.free_threads(0.0, 2, 2) == 2
    assert T.free_threads(0.4, 2, 2) == 2  # a light neighbour costs less than a thread would lose
    assert T.free_threads(0.6, 2, 2) == 1
    assert T.free_threads(1.0, 2, 2) == 1
    assert T.free_threads(5.0, 2, 2) == 1  # never below 1
    assert T.free_threads(0.0, 8, 4) == 4  # never above the count torch started with
    assert T.free_threads(2.2, 8, 8) == 6


class FakeMachine:
    """/proc counters of a machine with `cpus` CPUs: we use `ours` cores, others use `others` cores."""

    def __init__(self, cpus=2):
        self.cpus, self.t, self.busy, self.total, self.own = cpus, 0.0, 0, 0, 0
        self.ours, self.others = 1.0, 0.0

    def advance(self, seconds, hz=100):
        ticks = seconds * hz
        self.t += seconds
        self.busy += round((self.ours + self.others) * ticks)
        self.total += round(self.cpus * ticks)
        self.own += round(self.ours * ticks)


@pytest.fixture
def machine(monkeypatch):
    m = FakeMachine()
    monkeypatch.setattr(T, "_machine_ticks", lambda: (m.busy, m.total))
    monkeypatch.setattr(T, "_own_ticks", lambda: m.own)
    monkeypatch.setattr(T.os, "cpu_count", lambda: m.cpus)
    monkeypatch.setattr(T.os, "sched_getaffinity", lambda pid: set(range(m.cpus)), raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield m
    torch.set_num_threads(before)


def test_auto_follows_a_neighbour_after_two_agreeing_polls_and_back(machine):
    gov = T.ThreadGovernor(0, torch.device("cpu"), clock=lambda: machine.t)
    assert gov.active and gov.ceiling == 2
    machine.others = 1.0
    machine.advance(1)
    assert gov.poll(1) is None  # not yet POLL_S seconds
    machine.advance(T.POLL_S)
    assert gov.poll(2) is None and torch.get_num_threads() == 2  # one poll proposes, it does not act
    machine.advance(T.POLL_S)
    line = gov.poll(3)
    assert torch.get_num_threads() == 1
    assert line.startswith("threads 2 -> 1 at step 3") and "1.0 of 2 cores" in line
    machine.others = 0.0
    for step in (4, 5):
        machine.advance(T.POLL_S)
        line = gov.poll(step)
    assert torch.get_num_threads() == 2 and line.startswith("threads 1 -> 2 at step 5")
    gov.close()


def test_a_short_burst_changes_nothing(machine):
    gov = T.ThreadGovernor(0, torch.device("cpu"), clock=lambda: machine.t)
    for step, others in enumerate([1.0, 0.0, 1.0, 0.0, 0.2]):
        machine.others = others
        machine.advance(T.POLL_S)
        assert gov.poll(step) is None
    assert torch.get_num_threads() == 2
    gov.close()


def test_our_own_cpu_is_not_counted_as_a_neighbour(machine):
    machine.ours = 2.0  # two busy threads of ours: no one else
    gov = T.ThreadGovernor(0, torch.device("cpu"), clock=lambda: machine.t)
    a = gov._sample()
    machine.advance(T.POLL_S)
    assert gov.others_cores(a, gov._sample()) == pytest.approx(0.0)


def test_pinned_sets_and_close_restores(machine):
    gov = T.ThreadGovernor(1, torch.device("cpu"))
    assert not gov.active and torch.get_num_threads() == 1
    machine.others = 0.0
    machine.advance(3 * T.POLL_S)
    assert gov.poll(1) is None and torch.get_num_threads() == 1
    gov.close()
    assert torch.get_num_threads() == 2


def test_cuda_runs_are_left_alone(machine):
    gov = T.ThreadGovernor(1, torch.device("cuda"))
    assert not gov.active and torch.get_num_threads() == 2


def test_real_proc_counters_are_read_on_linux():
    if T._machine_ticks() is None:
        pytest.skip("no /proc/stat")
    busy, total = T._machine_ticks()
    assert 0 <= busy <= total and T._own_ticks() >= 0


def test_spec_key_range():
    assert load_spec("demo").train.threads == 0
    assert load_spec("demo", ["train.threads=1"]).train.threads == 1
    with pytest.raises(CtxsslError, match="train.threads"):
        load_spec("demo", ["train.threads=-1"])


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from ctxssl_cli.data.synthetic import prepare_synthetic

    root = tmp_path_factory.mktemp("threads") / "data"
    prepare_synthetic(root, classes=3, objects_per_class=4, views=4, resolution=16, seed=0, workers=0,
                      progress=False)
    return root


def test_pretrain_logs_its_threads_and_restores_them(tiny_data, tmp_path):
    from ctxssl_cli.train.dist import DistInfo
    from ctxssl_cli.train.loop import pretrain
    from ctxssl_cli.data.prepared import PreparedDataset

    before = torch.get_num_threads()
    spec = load_spec("demo", ["train.max_steps=2", "train.batch_size=16", "model.block_size=8", "model.n_embd=32",
                              "model.n_layer=1", "model.n_head=2", "train.threads=1", "data.workers=0"])
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    pretrain(spec, PreparedDataset(tiny_data), tmp_path / "run", info)
    assert "threads: 1 (pinned)" in (tmp_path / "run" / "train.log").read_text()
    assert torch.get_num_threads() == before
