"""foldconv: convolutional neural networks with every gradient written by hand.

The convolution and its kin live in :mod:`foldconv.functional` (stateless
forward/backward pairs); layers holding parameters in :mod:`foldconv.nn`.
"""

from foldconv._config import get_workspace_limit, set_workspace_limit

__version__ = "0.1.0"

__all__ = ["__version__", "get_workspace_limit", "set_workspace_limit"]
