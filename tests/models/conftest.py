from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def _seed_and_one_thread() -> Iterator[None]:
    """Seed each test; run these tiny models on one thread (intra-op threads only add
    synchronisation cost at this size, and thrash on a busy machine). Restored afterwards."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def trainable_ids(module: nn.Module) -> set[int]:
    return {id(p) for p in module.parameters() if p.requires_grad}


def assert_partition(model) -> None:
    """shared + task parameters are disjoint and cover every trainable parameter."""
    parts = [model.shared_parameters()] + [model.task_parameters(t) for t in model.task_names]
    ids = [id(p) for part in parts for p in part]
    assert len(ids) == len(set(ids)), "a parameter is in two parts"
    assert set(ids) == trainable_ids(model)


def grads_after(model, x: torch.Tensor, task: str) -> dict[str, set[int]]:
    """Backpropagate task's (sum of outputs) loss; ids of params with non-zero grad per part."""
    model.zero_grad(set_to_none=True)
    out = model(x)
    out[task].float().pow(2).mean().backward()
    touched = {id(p) for p in model.parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    return {
        "touched": touched,
        "shared": {id(p) for p in model.shared_parameters()},
        **{t: {id(p) for p in model.task_parameters(t)} for t in model.task_names},
    }


@pytest.fixture
def partition_check() -> Callable[[nn.Module], None]:
    """``partition_check(model)`` asserts the shared/task split is a partition."""
    return assert_partition


@pytest.fixture
def task_grads() -> Callable[..., dict[str, set[int]]]:
    """``task_grads(model, x, task)``: parameter ids touched by ``task``'s loss, and the parts."""
    return grads_after
