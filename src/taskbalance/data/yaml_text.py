"""YAML as taskbalance reads it (config files, experiment files, command-line values).

PyYAML follows YAML 1.1, whose floats need a dot: ``1e-3``, a learning rate as everyone writes
it, would be read as the string ``"1e-3"``. :func:`load_yaml` also reads YAML 1.2's floats.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

__all__ = ["load_yaml"]

_FLOAT_1_2 = re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$")


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2's exponent floats (no dot needed)."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_1_2, list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that also reads ``1e-3``-style numbers as floats."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader
