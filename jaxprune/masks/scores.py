"""Scores: how much each weight is worth keeping. Lower scores are pruned first.

A score is a pure function of one prunable leaf::

    fn(param, mask, **extras) -> float array of param's shape

`mask` is that leaf's current mask (True = kept); `extras` are the matching
leaves of any extra pytrees the caller passes (``score_args={"grads": grads}``
gives ``fn(param, mask, grads=g)``). Scores should be non-negative floats: they
are ranked through their float32 bit patterns (`float_keys`), where a negative
score ranks like 0, -0.0 ties with +0.0, and NaN ranks after everything,
+inf included. Weights already pruned are never ranked, whatever their score.

Built in (`SCORES`, also exported as `METHODS`):

- ``"magnitude"``: ``|w|``.
- ``"random"``: iid uniform ranks drawn from a PRNG key (needs ``key=``).
- ``"lamp"``: Lee et al. 2021, *Layer-adaptive sparsity for the magnitude-based
  pruning*: ``w**2 / sum(v**2 for kept v in the same leaf with |v| >= |w|)``.
  Only kept weights enter the sums. Equal magnitudes get equal scores, so ties
  are broken by position as everywhere else. Within a leaf it orders like
  magnitude; across leaves it balances them, which is why it is meant for the
  ``"global"`` distribution. Non-finite weights (inf, NaN) score +inf (ranked
  last) and stay out of the sums. Precision: on the CPU the sums are float64
  and each candidate's score is computed exactly in float64 (`_lamp_select_host`);
  on accelerators it is float32 (a per-leaf sort), so weights whose scores lie
  within float32 rounding of each other may be ranked differently there.
  Invariant to rescaling a leaf: exactly for power-of-two factors.

Your own: pass a callable as ``score=`` or `register_score` it under a name
(then ``method=name`` works everywhere a built-in name does, the study CLI's
validation included). Ties and counts follow the same rules as the built-ins.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.masks import selection

DEAD = selection.DEAD
# +inf's bit pattern is 0x7F800000; every NaN gets the key just above it.
NAN_KEY = 0x7F800001


# --------------------------------------------------------------------------
# Floats to rank keys


def float_keys(scores: jax.Array, mask: jax.Array) -> jax.Array:
    """int32 rank keys for non-negative float scores; pruned weights get `DEAD`.

    For non-negative float32 values the bit pattern, read as an int32, orders
    like the value, so the key is exact: no two different float32 scores share
    a key. Negative scores (including -0.0) are clamped to the key of +0.0 and
    every NaN gets `NAN_KEY`, after +inf.
    """
    s = scores.astype(jnp.float32)
    bits = jax.lax.bitcast_convert_type(s, jnp.int32)
    keys = jnp.where(jnp.isnan(s), NAN_KEY, jnp.clip(bits, 0, NAN_KEY - 1))
    return jnp.where(mask, keys, DEAD)


@functools.partial(jax.jit, static_argnums=0)
def _leaf_keys(fn, params, masks, extras):
    return [
        float_keys(fn(p, m, **{name: leaves[i] for name, leaves in extras.items()}), m)
        for i, (p, m) in enumerate(zip(params, masks))
    ]


# --------------------------------------------------------------------------
# The registry


@dataclasses.dataclass(frozen=True)
class Score:
    """A named way to rank weights.

    `keys(params, masks, key, extras)` maps lists of the ranked leaves (and
    ``extras``: name -> list of matching leaves) to int32 rank keys, lower
    pruned first, `DEAD` for pruned weights. `host_select`, when set, is an
    exact shortcut used when everything lives on the CPU: ``(params, masks, k)``
    -> one bool array per leaf marking the ``k`` lowest-scored kept weights, ties
    by position, the same selection as ranking the keys.
    """

    name: str
    keys: Callable[..., list]
    needs_key: bool = False
    host_select: Callable | None = None

    @classmethod
    def from_leaf_fn(cls, name: str, fn: Callable, host_select: Callable | None = None) -> Score:
        """A score from a per-leaf function ``fn(param, mask, **extras) -> float scores``."""

        def keys(params, masks, key=None, extras=None):
            del key
            return _leaf_keys(fn, list(params), list(masks), dict(extras or {}))

        return cls(name, keys, host_select=host_select)


SCORES: dict[str, Score] = {}


def register_score(name: str, fn: Callable, *, host_select: Callable | None = None) -> Score:
    """Registers ``fn(param, mask, **extras) -> float scores`` under `name`.

    Registered names are accepted wherever a built-in one is (``method=``,
    ``score=``, the study's ``--methods``). Raises ValueError if `name` is taken.
    """
    if name in SCORES:
        raise ValueError(f"a score named {name!r} is already registered")
    SCORES[name] = Score.from_leaf_fn(name, fn, host_select)
    return SCORES[name]


def resolve(score: str | Callable | Score, key) -> Score:
    """The `Score` for a name, a per-leaf callable or a `Score`; checks the key."""
    if isinstance(score, Score):
        found = score
    elif isinstance(score, str):
        if score not in SCORES:
            raise ValueError(f"unknown pruning method {score!r}; choose from {sorted(SCORES)}")
        found = SCORES[score]
    elif callable(score):
        found = Score.from_leaf_fn(getattr(score, "__name__", "custom"), score)
    else:
        raise TypeError(f"score must be a name, a callable or a Score, not {type(score).__name__}")
    if found.needs_key and key is None:
        raise ValueError(
            f"method {found.name!r} needs a PRNG key: pass key=jax.random.key(seed)"
        )
    return found


# --------------------------------------------------------------------------
# magnitude


def magnitude(param, mask):
    """|w| (ranked as float32): the smallest magnitudes are pruned first."""
    del mask
    return jnp.abs(param)


register_score("magnitude", magnitude)


# --------------------------------------------------------------------------
# random


def _lowbias32(x):
    """A bijective 32-bit integer hash with strong avalanche (C. Wellons' lowbias32)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


@jax.jit
def _random_keys(key, masks):
    # A counter-based generator, like threefry with fewer rounds: weight j of
    # the concatenation gets hash(a * j + b), with a (odd) and b drawn from
    # `key`. Integer-exact, so the same on every backend; 3x faster than
    # jax.random.bits on a CPU; and, being a bijection, nearly free of ties.
    a, b = jax.random.bits(key, (2,), jnp.uint32)
    a = a | jnp.uint32(1)
    out, offset = [], 0
    for m in masks:
        j = jax.lax.iota(jnp.uint32, m.size).reshape(m.shape) + jnp.uint32(offset % 2**32)
        h = _lowbias32(j * a + b) >> 1
        out.append(jnp.where(m, jnp.minimum(h, DEAD - 1).astype(jnp.int32), DEAD))
        offset += m.size
    return out


def random_keys(params: Sequence, masks: Sequence, key, extras=None) -> list[jax.Array]:
    """Ranks by pseudo-random integers drawn from `key`, iid uniform in effect.

    No weight's rank depends on its value or its leaf, so every kept weight is
    equally likely to be pruned: the pruning is unbiased across layers. A weight's
    rank depends on its position among the ranked leaves, so the same key gives
    the same masks on every backend.
    """
    del params, extras
    return _random_keys(key, list(masks))


SCORES["random"] = Score("random", random_keys, needs_key=True)


# --------------------------------------------------------------------------
# LAMP


def lamp(param, mask):
    """LAMP scores of one leaf (float32, one sort): see the module docstring."""
    w = jnp.abs(param.astype(jnp.float32))
    finite = jnp.isfinite(w)
    counted = finite & mask
    # Scale by a power of two near the largest kept magnitude: exact, and the
    # score is scale-free, so squares neither overflow nor underflow needlessly.
    _, exponent = jnp.frexp(jnp.max(jnp.where(counted, w, 0.0), initial=0.0))
    a = jnp.square(jnp.where(counted, jnp.ldexp(w, -exponent), 0.0)).reshape(-1)
    order = jnp.argsort(a, stable=True)
    sorted_a = a[order]
    suffix = jnp.cumsum(sorted_a[::-1])[::-1]
    # Equal values share the sum that starts at the first of them.
    denominator = suffix[jnp.searchsorted(sorted_a, sorted_a, side="left")]
    ratio = jnp.where(denominator > 0, sorted_a / jnp.where(denominator > 0, denominator, 1.0), 0.0)
    scores = jnp.zeros_like(a).at[order].set(ratio).reshape(param.shape)
    return jnp.where(finite, scores, jnp.inf)


# The host kernel ranks LAMP scores without sorting every leaf (a full sort of
# ResNet18's 11M weights costs ~0.5 s on a CPU, 6x a magnitude round). It
# leans on two facts: within a leaf the score only grows with |w|, and a
# histogram of |w| bounds every score from both sides. So:
#   1. bucket each kept |w| by the top 16 bits of its float32 pattern (exponent
#      and 7 mantissa bits, a bucket is < 0.8% wide) and count per bucket;
#   2. from counts and bucket edges, bound the score of every weight in a
#      bucket: lo = a_lo / (upper bound of its sum), hi = a_hi / (lower bound);
#   3. the k-th smallest score lies between the k-th smallest lower bound L
#      and the k-th smallest upper bound H: buckets with hi < L are pruned
#      whole, buckets with lo > H kept whole;
#   4. only the weights in between (about 1-3% of them) get exact scores,
#      with float64 sums, and the remaining count is taken from them by
#      (score, position), exactly as ranking all scores would.

_NONFINITE = 0x7F80  # buckets from here up hold inf and NaN (all exponent bits set)
_PRUNED = 0xFFFF
# Relative margin on the bounds: covers float64 rounding in them and in the
# exact scores (sums of up to 2**31 terms err by far less than 1e-6).
_SLACK = 1e-6


@jax.jit
def _lamp_buckets(params, masks):
    out = []
    for p, m in zip(params, masks):
        bits = jax.lax.bitcast_convert_type(jnp.abs(p.astype(jnp.float32)), jnp.uint32)
        out.append(jnp.where(m, bits >> 16, _PRUNED).astype(jnp.uint16).reshape(-1))
    return out


def _squared_edges(buckets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Smallest and largest w**2 (float64, exact) a bucket of finite magnitudes can hold."""
    first = buckets.astype(np.uint32) << 16
    lo = first.view(np.float32).astype(np.float64)
    hi = (first + 0xFFFF).view(np.float32).astype(np.float64)
    return lo * lo, hi * hi


def _suffix(x: np.ndarray, inclusive: bool) -> np.ndarray:
    out = np.cumsum(x[::-1])[::-1]
    return out if inclusive else np.append(out[1:], 0.0)


@dataclasses.dataclass
class _Histogram:
    buckets: np.ndarray  # one leaf's bucket per weight (uint16, _PRUNED for pruned)
    nonempty: np.ndarray  # nonempty bucket ids, ascending
    counts: np.ndarray  # weights in each of them
    lo: np.ndarray  # bounds on any score in each of them
    hi: np.ndarray


def _histogram(buckets: np.ndarray) -> _Histogram:
    counts = np.bincount(buckets, minlength=_PRUNED + 1)[:_PRUNED]
    nonempty = np.flatnonzero(counts)
    counts = counts[nonempty]
    finite = nonempty < _NONFINITE
    c = counts[finite].astype(np.float64)
    a_lo, a_hi = _squared_edges(nonempty[finite])
    # Sums over the bucket and those above it, at most (for lo) and at least (for hi).
    lo = a_lo / _suffix(c * a_hi, inclusive=True) * (1 - _SLACK)
    hi = a_hi / (_suffix(c * a_lo, inclusive=False) + a_hi) * (1 + _SLACK)
    tail = np.full(np.count_nonzero(~finite), np.inf)
    return _Histogram(buckets, nonempty, counts, np.append(lo, tail), np.append(hi, tail))


def _kth_smallest(values: np.ndarray, counts: np.ndarray, k: int) -> float:
    order = np.argsort(values, kind="stable")
    return values[order[np.searchsorted(np.cumsum(counts[order]), k)]]


def _exact_scores(w: np.ndarray, where: np.ndarray, base: float, finite: np.ndarray) -> np.ndarray:
    """float64 LAMP scores of the weights `w[where]`, given the sum `base` of all kept w**2 above them."""
    a = np.square(w[where], dtype=np.float64)
    a[~finite] = np.inf
    order = np.argsort(a, kind="stable")
    sorted_a = a[order]
    counted = np.where(np.isfinite(sorted_a), sorted_a, 0.0)
    suffix = _suffix(counted, inclusive=True) + base
    denominator = suffix[np.searchsorted(sorted_a, sorted_a, side="left")]
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(denominator > 0, counted / denominator, 0.0)
    ratio[~np.isfinite(sorted_a)] = np.inf
    scores = np.empty_like(ratio)
    scores[order] = ratio
    return scores


def _lamp_select_host(params: Sequence, masks: Sequence, k: int) -> list[np.ndarray]:
    """The `k` kept weights with the lowest LAMP scores, ties by position (see above)."""
    shapes = [tuple(np.shape(m)) for m in masks]
    if k == 0:
        return [np.zeros(s, bool) for s in shapes]
    hists = [_histogram(np.asarray(b)) for b in _lamp_buckets(list(params), list(masks))]
    counts = np.concatenate([h.counts for h in hists])
    low = _kth_smallest(np.concatenate([h.lo for h in hists]), counts, k)
    high = _kth_smallest(np.concatenate([h.hi for h in hists]), counts, k)
    selected, candidates, scores = [], [], []
    for h, p in zip(hists, params):
        # First bucket that may hold a score >= low; last that may hold one <= high.
        first = int(np.argmax(h.hi >= low)) if np.any(h.hi >= low) else len(h.nonempty)
        last = int(np.flatnonzero(h.lo <= high)[-1]) if np.any(h.lo <= high) else -1
        b1 = int(h.nonempty[first]) if first < len(h.nonempty) else _PRUNED
        selected.append(h.buckets < b1)  # every score there is < low <= the k-th
        if last < first:
            candidates.append(np.zeros(0, np.intp))
            scores.append(np.zeros(0))
            continue
        b2 = int(h.nonempty[last])
        where = np.flatnonzero((h.buckets >= b1) & (h.buckets <= b2))
        w = np.asarray(p, np.float32).reshape(-1)
        base = 0.0
        if b2 < _NONFINITE - 1:
            above = (h.buckets > b2) & (h.buckets < _NONFINITE)
            x = np.where(above, w, np.float32(0))
            base = float(np.einsum("i,i->", x, x, dtype=np.float64))
        candidates.append(where)
        scores.append(_exact_scores(w, where, base, h.buckets[where] < _NONFINITE))
    still = k - sum(int(np.count_nonzero(s)) for s in selected)
    flat = np.concatenate(scores)
    chosen = np.zeros(flat.size, bool)
    chosen[np.argsort(flat, kind="stable")[:still]] = True
    offset = 0
    for s, where in zip(selected, candidates):
        s[where[chosen[offset : offset + where.size]]] = True
        offset += where.size
    return [s.reshape(shape) for s, shape in zip(selected, shapes)]


register_score("lamp", lamp, host_select=_lamp_select_host)

# The name the study CLI and `prune_global(method=...)` have always used.
METHODS = SCORES

