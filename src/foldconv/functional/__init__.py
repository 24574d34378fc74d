"""Stateless forward/backward pairs: the convolution and its kin."""

__all__: list[str] = []
