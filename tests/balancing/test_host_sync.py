"""Gradient methods read an accelerator at most once per step, never inside solver loops.

No GPU is needed: J lives on a stand-in "accelerator". Tensors on it are wrappers around CPU
tensors that report the ``meta`` device; a dispatch mode runs every operation on the wrapped
CPU data and counts what would synchronise a real accelerator with the host: reading a scalar
(``.item()``, ``bool()``, ``float()``: ``aten._local_scalar_dense``), comparing tensors on the
host (``aten.equal``), and copying device memory to the host (``.to("cpu")``). An operation that
mixes accelerator tensors with CPU tensors (other than 0-d scalars) is an error, as on CUDA.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

import taskbalance as tb

FAKE = torch.device("meta")
aten = torch.ops.aten


class OnAccelerator(torch.Tensor):
    """A CPU tensor posing as a tensor on an accelerator (device ``meta``)."""

    data_: torch.Tensor

    @staticmethod
    def __new__(cls, data: torch.Tensor) -> OnAccelerator:
        out = torch.Tensor._make_wrapper_subclass(
            cls,
            data.shape,
            strides=data.stride(),
            dtype=data.dtype,
            device=FAKE,
            requires_grad=data.requires_grad,
        )
        out.data_ = data
        return out

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):  # type: ignore[override]  # pragma: no cover
        raise AssertionError("operations on OnAccelerator go through FakeAccelerator")


class FakeAccelerator(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        on_device = False
        host_tensors = []

        def unwrap(x: Any) -> Any:
            nonlocal on_device
            if isinstance(x, OnAccelerator):
                on_device = True
                return x.data_
            if isinstance(x, torch.Tensor) and x.dim() > 0:
                host_tensors.append(x)
            if isinstance(x, torch.device) and x.type == "meta":
                on_device = True
                return torch.device("cpu")
            return x

        raw_args = tree_map(unwrap, args)
        raw_kwargs = tree_map(unwrap, kwargs)
        if func is aten._to_copy.default and on_device:
            target = kwargs.get("device")
            if target is not None and target.type == "cpu":
                self.syncs.append("device-to-host copy")
                return func(*raw_args, **raw_kwargs)
            if not isinstance(args[0], OnAccelerator):  # host-to-device: no synchronisation
                return OnAccelerator(func(*raw_args, **raw_kwargs))
        if on_device and func in (aten._local_scalar_dense.default, aten.equal.default):
            self.syncs.append(str(func))
            return func(*raw_args, **raw_kwargs)
        if on_device and host_tensors:
            raise RuntimeError(f"{func} mixes accelerator and CPU tensors")
        out = func(*raw_args, **raw_kwargs)
        if not on_device:
            return out
        if func._schema.is_mutable or "out" in kwargs:  # in place: the wrapper is the result
            return args[0] if not isinstance(out, tuple) else tuple(args[: len(out)])
        return tree_map(lambda x: OnAccelerator(x) if isinstance(x, torch.Tensor) else x, out)


GRADIENT_METHODS = [n for n in tb.available_methods() if tb.method_info(n).kind == "gradient"]


def conflicting_jacobian(T: int, P: int = 64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(T)
    J = torch.randn(T, P, generator=gen)
    J[1] = -0.7 * J[0] + 0.1 * torch.randn(P, generator=gen)  # a conflicting pair
    return J


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_one_synchronisation_per_aggregation_at_most(name):
    for T in (3, 10):  # 10 > 8: MGDA's Wolfe loop, CAGrad's polish, Nash's Newton
        J = conflicting_jacobian(T)
        expected = tb.create(name, T, seed=0) if name in SEEDED else tb.create(name, T)
        method = tb.create(name, T, seed=0) if name in SEEDED else tb.create(name, T)
        assert isinstance(expected, tb.GradientMethod) and isinstance(method, tb.GradientMethod)
        reference = expected.aggregate(J)
        mode = FakeAccelerator()
        with mode:
            d = method.aggregate(OnAccelerator(J))
        assert isinstance(d, OnAccelerator)
        torch.testing.assert_close(d.data_, reference)
        assert len(mode.syncs) <= 1, mode.syncs


SEEDED = {"pcgrad", "gradvac", "graddrop"}


def test_the_stand_in_counts_reads_of_the_device():
    mode = FakeAccelerator()
    with mode:
        x = OnAccelerator(torch.arange(4.0))
        total = x.sum()
        for _ in range(3):
            float(total)
        host = x.to("cpu")
        (host * 2).sum().item()  # host work: free
    assert mode.syncs == ["aten._local_scalar_dense.default"] * 3 + ["device-to-host copy"]
    with pytest.raises(RuntimeError, match="mixes"), mode:
        OnAccelerator(torch.ones(3)) + torch.ones(3)


@pytest.mark.parametrize("name", ["gls", "stch", "db_mtl"])
def test_log_loss_methods_leave_the_sign_check_to_the_callers_one_sync(name):
    """The sign of the losses is checked by the public calls and by the Balancer's finite check
    (one sync for both); the step's own entry points read nothing back."""
    L = torch.tensor([0.5, 2.0, 1.5])
    method = tb.create(name, 3)
    mode = FakeAccelerator()
    with mode:
        L_dev = OnAccelerator(L)
        if name == "db_mtl":
            method.transform_losses(L_dev)
        else:
            assert isinstance(method, tb.LossMethod)
            method.combine_present(L_dev, None)
    assert mode.syncs == []
