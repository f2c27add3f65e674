"""Test-wide settings: one torch thread, so that tests do not contend for the CI machine's 2 cores."""

import torch

torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture
def interrupt_chunks(monkeypatch):
    """`interrupt_chunks(n)`: the prepared-format writer raises KeyboardInterrupt (a Ctrl-C) when asked for
    chunk n+1, after writing n; returns the list of chunks written. `interrupt_chunks.disarm()` puts the real
    writer back, `interrupt_chunks.real` is it."""
    from ctxssl_cli.data import prepared

    real, written = prepared.PreparedWriter.write_chunk, []

    def arm(n: int) -> list:
        def flaky(self, c, objects):
            if len(written) == n:
                raise KeyboardInterrupt
            written.append(c)
            real(self, c, objects)

        monkeypatch.setattr(prepared.PreparedWriter, "write_chunk", flaky)
        return written

    arm.disarm = lambda: monkeypatch.setattr(prepared.PreparedWriter, "write_chunk", real)
    arm.real = real
    return arm
