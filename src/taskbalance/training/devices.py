"""Where a run happens: the device (validated) and the seeds."""

from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["auto_device", "resolve_device", "seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and ``random``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (seed the legacy global RNG users rely on)
    torch.manual_seed(seed)


def auto_device() -> torch.device:
    """The best available device: CUDA (the current device), then MPS (Apple GPU), then CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_device(device: str | torch.device) -> torch.device:
    """A ``torch.device`` for ``"auto"`` (:func:`auto_device`), ``"cpu"``, ``"cuda"``,
    ``"cuda:N"`` or ``"mps"``.

    Raises:
        ValueError: the device is malformed or not available on this machine (the message says
            why and what to use instead).
    """
    if device == "auto":
        return auto_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}"
        ) from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {str(device)!r} was requested but CUDA is not available "
                f"(torch {torch.__version__}, built with CUDA: {torch.version.cuda is not None}); "
                "use device='cpu', or install a CUDA build of torch on a machine with a GPU"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(
                f"device {str(device)!r} was requested but only {count} CUDA device(s) exist "
                f"(cuda:0..cuda:{count - 1})"
            )
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(
                f"device {str(device)!r} was requested but MPS (Apple GPU) is not available on "
                "this machine; use device='cpu'"
            )
    elif dev.type != "cpu":
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}"
        )
    return dev
