"""Task heads: shapes, normalisation, coordinate logits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from taskbalance.models import ClassificationHead, CoordinateHead, DenseHead, NormalHead


def test_classification_head_vector_and_map() -> None:
    head = ClassificationHead(6, 4, hidden=5, dropout=0.1)
    assert head(torch.randn(3, 6)).shape == (3, 4)
    assert head(torch.randn(3, 6, 5, 5)).shape == (3, 4)
    with pytest.raises(ValueError, match="num_classes"):
        ClassificationHead(6, 0)


def test_dense_and_normal_heads() -> None:
    x = torch.randn(2, 6, 7, 9)
    assert DenseHead(6, 13)(x).shape == (2, 13, 7, 9)
    normals = NormalHead(6)(x)
    assert normals.shape == (2, 3, 7, 9)
    torch.testing.assert_close(normals.norm(dim=1), torch.ones(2, 7, 9))
    with pytest.raises(ValueError, match="feature map"):
        DenseHead(6, 1)(torch.randn(2, 6))


def test_coordinate_head_from_map_and_vector() -> None:
    head = CoordinateHead(6, width=20, height=12, hidden=4)
    logits = head(torch.randn(2, 6, 5, 7))
    assert logits.shape == (2, 32)
    lx, ly = head.split(logits)
    assert lx.shape == (2, 20) and ly.shape == (2, 12)
    vec = CoordinateHead(6, width=20, height=12, from_map=False)
    assert vec(torch.randn(2, 6)).shape == (2, 32)
    with pytest.raises(ValueError, match="from_map=False"):
        head(torch.randn(2, 6))


def test_coordinate_head_localises_a_peak() -> None:
    """Identity-like scores: the x logits peak at the column of a bright pixel, y at its row."""
    head = CoordinateHead(1, width=8, height=6, hidden=1)
    first, last = head.net[0], head.net[2]
    assert isinstance(first, nn.Conv2d) and isinstance(last, nn.Conv2d)
    assert first.bias is not None and last.bias is not None
    with torch.no_grad():
        first.weight.fill_(1.0)
        first.bias.zero_()
        last.weight.fill_(1.0)
        last.bias.zero_()
    fmap = torch.zeros(1, 1, 6, 8)
    fmap[0, 0, 4, 2] = 10.0
    lx, ly = head.split(head(fmap))
    assert lx.argmax().item() == 2 and ly.argmax().item() == 4
