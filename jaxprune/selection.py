"""Kept for existing imports: the selection kernels now live in `jaxprune.masks.selection`.

This name is the same module object (not a copy), so ``from jaxprune import selection``
and patching its attributes, as tests and benchmarks do, reach the real kernels.
"""

import sys

from jaxprune.masks import selection as _selection

sys.modules[__name__] = _selection
