"""Test-wide settings."""

import os

import torch

# Tests use tiny models: one intra-op thread per test process avoids thrashing on small machines
# (CI runs two pytest-xdist workers on two cores).
torch.set_num_threads(1)

# Real datasets read from disk get DataLoader workers by default ("auto"); the tests' fake datasets
# are a few tiny files, which worker processes would only slow down.
os.environ.setdefault("TASKBALANCE_NUM_WORKERS", "0")
