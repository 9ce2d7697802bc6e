"""How much two sets of masks agree: the Jaccard overlap of their kept weights.

``|A ∩ B| / |A ∪ B|`` over every prunable leaf together (1: the same weights
kept, 0: disjoint). Masks are bit-packed (`numpy.packbits`, 8 weights a byte) and
counted with a popcount table, so two ResNet18 masks (11M weights each) compare
in a few milliseconds and 1.4 MB, without params.
"""

from __future__ import annotations

import jax
import numpy as np

from jaxprune.masks.core import PyTree, _prunable_masks, path_str

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def packed(masks: PyTree) -> dict[str, np.ndarray]:
    """Each prunable leaf's mask as bits (row-major, `numpy.packbits`), by path; 0-d leaves left out."""
    return {path_str(p): np.packbits(np.asarray(jax.device_get(m), bool).ravel()) for p, m in _prunable_masks(masks)}


def _count(bits: np.ndarray) -> int:
    return int(_POPCOUNT[bits].sum(dtype=np.int64))


def jaccard(a: PyTree | dict[str, np.ndarray], b: PyTree | dict[str, np.ndarray]) -> float:
    """Jaccard overlap of the kept weights of masks `a` and `b` (pytrees, or `packed` dicts).

    Both must have the same prunable leaves and shapes (ValueError otherwise).
    Two all-pruned masks overlap by 1 (they agree)."""
    pa = a if _is_packed(a) else packed(a)
    pb = b if _is_packed(b) else packed(b)
    if pa.keys() != pb.keys() or any(pa[k].shape != pb[k].shape for k in pa):
        raise ValueError("the two masks do not cover the same prunable leaves with the same shapes")
    both = sum(_count(pa[k] & pb[k]) for k in pa)
    either = sum(_count(pa[k] | pb[k]) for k in pa)
    return 1.0 if either == 0 else both / either


def _is_packed(x) -> bool:
    return isinstance(x, dict) and all(isinstance(v, np.ndarray) and v.dtype == np.uint8 for v in x.values()) and bool(x)
