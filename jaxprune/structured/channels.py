"""Channel pruning that removes channels: a smaller model, with its params and batch stats cut.

A `Group` is a set of channels that must go together (Torch-Pruning's dependency group,
DepGraph, CVPR 2023): a conv's output channels, its batch norm, and the input channels of
the layers that read them. Which groups a model has is its family's `Coupling`:

- ``cifar_vgg_N``: every conv: its outputs, its batch norm, and the next conv's inputs (the
  last conv's: the dense ``fc``'s, one input per channel after the final 2x2 -> 1x1 pool);
- ``cifar_resnet_N`` and ``resnet18``: inside each residual block (Li et al., ICLR 2017, for
  ResNet-56/110): conv1's outputs, bn1, conv2's inputs. Channels tied by a residual add are
  not removed (they would have to go from every block of a stage at once).

Scores, one per channel, from the producer conv's kernel (HWIO: output channels last):
``l1`` (sum of |w| over the filter, Li et al. 2017), ``l2`` (its Euclidean norm), ``bn-scale``
(|gamma| of its batch norm, Liu et al., ICCV 2017) and ``random`` (a permutation from the
seed). ``scope='layer'`` removes the same fraction from every group; ``scope='global'`` ranks
all channels together after dividing each group's scores by their mean (Torch-Pruning's
``normalizer='mean'``), keeping at least one channel per group.

The pruned network computes what the original computes with the removed channels silenced
(their batch norm's scale and offset set to 0, so they output relu(0) = 0): `silenced` gives
those variables, and the tests hold the two to equal eval logits within 1e-5.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.runtime.errors import UserError

Path = tuple[str, ...]
SCORES = ("l1", "l2", "bn-scale", "random")
SCOPES = ("layer", "global")


class ChannelError(UserError):
    """A model channel pruning cannot couple, or an impossible request."""


@dataclasses.dataclass(frozen=True)
class Group:
    """Channels removed together.

    Attributes:
      name: the producer conv's module path, '/'-joined (what per-group counts are keyed by).
      producer: that conv's module path (its kernel's last axis, and its bias, hold the channels).
      norm: its batch norm's module path (scale, bias; mean, var in batch_stats).
      consumers: module paths of the convs or dense layers whose kernel's input axis (-2) reads them.
    """

    name: str
    producer: Path
    norm: Path
    consumers: tuple[Path, ...]


@dataclasses.dataclass(frozen=True)
class Coupling:
    """A model family's channel groups. The smaller module is the registry's
    (``ModelSpec.build(..., channels=counts)``, counts in this group order).

    Attributes:
      groups: ``groups(name, params)`` -> the model's `Group`s.
    """

    groups: Callable[[str, dict], list[Group]]


def _vgg_groups(name: str, params: dict) -> list[Group]:
    convs = sorted((k for k in params if k.startswith("layers_")), key=lambda k: int(k.split("_")[1]))
    return [Group(c, (c, "conv"), (c, "bn"), ((nxt, "conv"),) if nxt != "fc" else (("fc",),))
            for c, nxt in zip(convs, [*convs[1:], "fc"])]


def _block_groups(prefix: str) -> Callable[[str, dict], list[Group]]:
    def groups(name: str, params: dict) -> list[Group]:
        blocks = sorted((k for k in params if re.fullmatch(prefix, k)), key=lambda k: [int(n) for n in re.findall(r"\d+", k)])
        return [Group(f"{b}/conv1", (b, "conv1"), (b, "bn1"), ((b, "conv2"),)) for b in blocks]
    return groups


COUPLINGS: dict[str, Coupling] = {
    "cifar_vgg_": Coupling(_vgg_groups),
    "cifar_resnet_": Coupling(_block_groups(r"blocks_\d+")),
    "resnet18": Coupling(_block_groups(r"layer\d_\d")),
}


def coupling(model: str) -> Coupling:
    """The `Coupling` of a registered model name; ChannelError (one line) for a model without one."""
    for prefix, c in COUPLINGS.items():
        if model == prefix or (prefix.endswith("_") and model.startswith(prefix)):
            return c
    raise ChannelError(
        f"channel pruning does not know how {model!r}'s channels are coupled; it knows "
        f"{', '.join(p + ('N' if p.endswith('_') else '') for p in COUPLINGS)}. A model of your own needs an entry in "
        "jaxprune.structured.channels.COUPLINGS (its groups: each conv whose output channels can go, its batch "
        "norm, and the layers that read them) and a narrow= builder of the smaller module in jaxprune.models.register")


def _get(tree: dict, path: Path) -> dict:
    for k in path:
        tree = tree[k]
    return tree


def scores(params: dict, groups: list[Group], score: str, seed: int = 0) -> list[np.ndarray]:
    """One score per channel of each group (higher: kept first); see the module docstring."""
    if score not in SCORES:
        raise ChannelError(f"channel score {score!r}: choose from {', '.join(SCORES)}")
    rng = np.random.default_rng(seed)
    out = []
    for g in groups:
        k = np.asarray(_get(params, g.producer)["kernel"], np.float64)
        w = k.reshape(-1, k.shape[-1])
        if score == "l1":
            s = np.abs(w).sum(0)
        elif score == "l2":
            s = np.sqrt((w * w).sum(0))
        elif score == "bn-scale":
            s = np.abs(np.asarray(_get(params, g.norm)["scale"], np.float64))
        else:
            s = rng.permutation(k.shape[-1]).astype(np.float64)
        out.append(s)
    return out


def _top(s: np.ndarray, n: int) -> np.ndarray:
    """The sorted indices of the `n` highest scores (ties: the lower index)."""
    return np.sort(np.argsort(-s, kind="stable")[:n])


def group_sizes(params: dict, groups: list[Group]) -> list[int]:
    """Each group's channels: its producer kernel's output channels."""
    return [_get(params, g.producer)["kernel"].shape[-1] for g in groups]


def select(channel_scores: list[np.ndarray], fraction: float, scope: str = "layer") -> list[np.ndarray]:
    """Per group, the sorted indices of the channels kept when `fraction` of them (per group, or
    of all channels with `scope='global'`) are removed, the lowest scores first; ties go to the
    lower index. At least one channel stays in every group."""
    if not 0 <= fraction < 1:
        raise ChannelError(f"channel fraction must be in [0, 1), got {fraction}")
    if scope not in SCOPES:
        raise ChannelError(f"channel scope {scope!r}: choose from {', '.join(SCOPES)}")
    if scope == "layer":
        keep = [max(1, len(s) - int(round(fraction * len(s)))) for s in channel_scores]
        return [_top(s, k) for s, k in zip(channel_scores, keep)]
    normed = [s / (s.mean() if s.mean() > 0 else 1.0) for s in channel_scores]
    flat = np.concatenate(normed)
    owner = np.concatenate([np.full(len(s), i) for i, s in enumerate(normed)])
    index = np.concatenate([np.arange(len(s)) for s in normed])
    removed = np.zeros(len(channel_scores), int)
    dropped = np.zeros(len(flat), bool)
    for j in np.argsort(flat, kind="stable"):  # lowest first
        if dropped.sum() == int(round(fraction * len(flat))):
            break
        if removed[owner[j]] + 1 < len(normed[owner[j]]):
            removed[owner[j]] += 1
            dropped[j] = True
    return [np.sort(index[(owner == g) & ~dropped]) for g in range(len(normed))]


def _take(x, idx: np.ndarray, axis: int):
    return jnp.take(jnp.asarray(x), jnp.asarray(idx), axis=axis)


def cut(variables: dict, groups: list[Group], kept: list[np.ndarray]) -> dict:
    """``{'params', 'batch_stats'}`` with every removed channel cut out of each coupled tensor."""
    params = jax.tree.map(lambda x: x, variables["params"])  # a fresh nesting of dicts to edit
    stats = jax.tree.map(lambda x: x, variables.get("batch_stats", {}))
    for g, idx in zip(groups, kept):
        prod = _get(params, g.producer)
        prod["kernel"] = _take(prod["kernel"], idx, -1)
        if "bias" in prod:
            prod["bias"] = _take(prod["bias"], idx, 0)
        norm = _get(params, g.norm)
        for k in ("scale", "bias"):
            norm[k] = _take(norm[k], idx, 0)
        bs = _get(stats, g.norm)
        for k in ("mean", "var"):
            bs[k] = _take(bs[k], idx, 0)
        for c in g.consumers:
            layer = _get(params, c)
            layer["kernel"] = _take(layer["kernel"], idx, -2)
    return {"params": params, "batch_stats": stats}


def silenced(variables: dict, groups: list[Group], kept: list[np.ndarray]) -> dict:
    """The original variables with each removed channel silenced (its batch norm's scale and
    offset 0): the full-size network that computes what the pruned one does."""
    params = jax.tree.map(lambda x: x, variables["params"])
    for g, idx in zip(groups, kept):
        norm = _get(params, g.norm)
        off = np.ones(norm["scale"].shape[0], bool)
        off[idx] = False
        for k in ("scale", "bias"):
            norm[k] = jnp.where(jnp.asarray(off), 0.0, norm[k]).astype(norm[k].dtype)
    return {**variables, "params": params}


@dataclasses.dataclass(frozen=True)
class Pruned:
    """A channel-pruned network.

    Attributes:
      model: the smaller Flax module.
      variables: its ``{'params', 'batch_stats'}``.
      counts: channels kept per group, in group order (what the module was built with).
      kept: per group, the original indices of the channels kept.
      groups: the groups, as `coupling(model).groups` found them.
    """

    model: nn.Module
    variables: dict
    counts: tuple[int, ...]
    kept: list[np.ndarray]
    groups: list[Group]


def prune_channels(model_name: str, variables: dict, fraction: float, *, score: str = "l1", scope: str = "layer",
                   classes: int = 10, width: int = 0, dtype: Any = jnp.float32, seed: int = 0) -> Pruned:
    """Removes `fraction` of `model_name`'s prunable channels (see the module docstring) from
    `variables` (``{'params', 'batch_stats'}`` of the registered model at `width`, 0: published)."""
    from jaxprune import models

    spec = models.get(model_name)
    c = coupling(model_name)
    groups = c.groups(model_name, variables["params"])
    kept = select(scores(variables["params"], groups, score, seed), fraction, scope)
    counts = tuple(len(k) for k in kept)
    module = spec.build(classes, width or spec.width, dtype, channels=counts)
    return Pruned(module, cut(variables, groups, kept), counts, kept, groups)


def weights_removed(variables: dict, pruned: Pruned) -> float:
    """The fraction of the conv and dense kernels' weights the pruning removed."""
    kept, total = kept_weights(variables["params"], pruned.groups, pruned.counts)
    return 1 - kept / total


def cut_to_counts(model_name: str, variables: dict, counts, score: str = "l1", seed: int = 0) -> dict:
    """`variables` with each group of `model_name` cut down to its `counts` channels, the
    highest-scoring ones kept (ties: the lower index)."""
    groups = coupling(model_name).groups(model_name, variables["params"])
    ranked = scores(variables["params"], groups, score, seed)
    return cut(variables, groups, [_top(s, n) for s, n in zip(ranked, counts)])


def producers(model_name: str, params: dict) -> list[Path]:
    """The module path of each channel group's producer conv, in group order."""
    return [g.producer for g in coupling(model_name).groups(model_name, params)]


def kept_weights(params: dict, groups: list[Group], counts, include=None) -> tuple[int, int]:
    """(kept, all) entries of the conv and dense kernels (only those whose module paths are in
    `include`, if given) if each group kept `counts` channels (shapes only: nothing is cut)."""
    out_of, in_of = {}, {}
    for g, n in zip(groups, counts):
        out_of[g.producer] = n
        for c in g.consumers:
            in_of[c] = n
    kept = total = 0
    for path, x in jax.tree_util.tree_leaves_with_path(params):
        names = tuple(p.key for p in path)
        if names[-1] != "kernel" or (include is not None and names[:-1] not in include):
            continue
        shape = list(x.shape)
        total += math.prod(shape)
        shape[-1] = out_of.get(names[:-1], shape[-1])
        shape[-2] = in_of.get(names[:-1], shape[-2])
        kept += math.prod(shape)
    return kept, total


def fraction_for(params: dict, groups: list[Group], channel_scores: list[np.ndarray], target: float,
                 scope: str = "layer", include=None) -> tuple[float, float]:
    """The channel fraction whose selection removes the fraction of kernel weights closest to
    `target` (whole channels cannot hit it exactly), and the weight fraction it removes.
    Weights removed grow with the channel fraction, so a bisection over it finds the closest."""
    def removed(f: float) -> float:
        kept, total = kept_weights(params, groups, [len(k) for k in select(channel_scores, f, scope)], include)
        return 1 - kept / total

    lo, hi = 0.0, 0.999
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if removed(mid) < target else (lo, mid)
    best = min((lo, hi), key=lambda f: abs(removed(f) - target))
    return best, removed(best)


def prune_to_weights(model_name: str, variables: dict, target: float, **kw) -> tuple[Pruned, float]:
    """`prune_channels` at the channel fraction that removes about `target` of the kernel weights
    (`fraction_for`); returns the pruned network and the fraction of weights it removed."""
    c = coupling(model_name)
    groups = c.groups(model_name, variables["params"])
    s = scores(variables["params"], groups, kw.get("score", "l1"), kw.get("seed", 0))
    fraction, reached = fraction_for(variables["params"], groups, s, target, kw.get("scope", "layer"))
    return prune_channels(model_name, variables, fraction, **kw), reached
