"""Gradient-aggregation methods: each module registers one method."""

__all__: list[str] = []
