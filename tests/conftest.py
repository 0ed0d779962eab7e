"""Test-wide settings."""

import torch

# Tests use tiny models: one intra-op thread per test process avoids thrashing on small machines
# (CI runs two pytest-xdist workers on two cores).
torch.set_num_threads(1)
