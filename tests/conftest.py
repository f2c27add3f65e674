"""Test-wide settings: one torch thread, so that tests do not contend for the CI machine's 2 cores."""

import torch

torch.set_num_threads(1)
