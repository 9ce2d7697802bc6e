"""The final masks of a study's phases, read from their checkpoints without the params, and
what the report derives from them: each layer's sparsity and the overlap of kept weights.

A phase's masks are read once (`checkpoint.restore_masks`: Orbax's partial restore),
bit-packed (`masks.overlap.packed`: a bit per weight, 1.4 MB for the write-up's
ResNet18) and reduced; nothing here loads weights or trains.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import jax
import numpy as np
import pandas as pd

from jaxprune.training import checkpoint, rundir
from jaxprune import masks as masks_lib
from jaxprune.study import config as config_lib
from jaxprune.models import cost as model_cost, kernels
from jaxprune.study import driver as study
from jaxprune.report.results import PHASE as KEYS  # a phase's keys in results.csv


@dataclasses.dataclass(frozen=True)
class PhaseMasks:
    """One phase's final masks, packed: ``bits[layer]`` (numpy.packbits of the kept flags,
    row-major) and ``sizes[layer]`` (weights), for each prunable layer in leaf order."""

    bits: dict[str, np.ndarray]
    sizes: dict[str, int]
    flops_per_weight: dict[str, int] = dataclasses.field(default_factory=dict)  # multiply-adds per image (models.cost)

    def kept(self) -> dict[str, int]:
        """Weights kept per layer."""
        return {k: int(np.unpackbits(v, count=self.sizes[k]).sum()) for k, v in self.bits.items()}


def abstract_masks(cfg: config_lib.TrainConfig):
    """The masks' structure a run of `cfg` saves (ShapeDtypeStructs; shapes only, no compute)."""
    params = kernels.abstract_params(kernels.Arch.of(cfg))
    return jax.eval_shape(lambda p: masks_lib.init_masks(p, kernels.mask_filter(tuple(cfg.exclude))), params)


def read(folder: Path, cfg: config_lib.TrainConfig) -> PhaseMasks:
    """The final masks of the run in `folder` (its latest kept epoch); CheckpointError (one line) if
    they cannot be read."""
    where, epoch = checkpoint.locate(folder, "latest")
    masks = checkpoint.restore_masks(where, epoch, abstract_masks(cfg))
    bits = masks_lib.overlap.packed(masks)
    sizes = {masks_lib.path_str(p): math.prod(m.shape) for p, m in jax.tree_util.tree_leaves_with_path(masks) if m.ndim}
    cost = model_cost.arch_cost(kernels.Arch.of(cfg), tuple(cfg.exclude))
    return PhaseMasks(bits, sizes, dict(zip(sizes, cost.flops_per_weight)))


def study_masks(workdir: str | Path, wanted: pd.DataFrame) -> tuple[dict[tuple, PhaseMasks], list[str]]:
    """The final masks of the phases in `wanted` (rows with KEYS, e.g. the report's results per
    target), by their KEYS tuple, and a line for each phase whose masks could not be read (left out)."""
    workdir = Path(workdir)
    record = rundir.read_record(workdir) or {}
    cfg = config_lib.from_dict(config_lib.StudyConfig, record.get("config") or {})
    by_keys = {_keys(p): p for p in study.recorded_phases(workdir)}
    out, missing = {}, []
    for row in wanted[KEYS].drop_duplicates().itertuples(index=False):
        key = _normal(row)
        phase = by_keys.get(key)
        if phase is None:
            missing.append(f"{'/'.join(map(str, key))}: not in {workdir / rundir.CONFIG}")
            continue
        try:
            out[key] = read(workdir / phase.name / "checkpoints", study.phase_config(cfg, phase))
        except checkpoint.CheckpointError as e:
            missing.append(f"{phase.name}: {e}")
    return out, missing


def _keys(p: study.Phase) -> tuple:
    return _normal((p.seed, p.retrain, p.distribution, p.schedule, p.method, p.target, p.round))


def _normal(values) -> tuple:
    seed, retrain, distribution, schedule, method, target, rnd = values
    return int(seed), str(retrain), str(distribution), str(schedule), str(method), round(float(target), 12), int(rnd)


def layer_profile(found: dict[tuple, PhaseMasks]) -> pd.DataFrame:
    """Long form: per phase (KEYS) and prunable layer: ``layer``, ``position`` (its place among the
    leaves, which pytrees sort by name), ``size``, ``kept``, ``sparsity`` (fraction pruned), and
    ``flops``, ``flops_nz``: the layer's multiply-adds per image, dense and left by its mask."""
    rows = [
        {**dict(zip(KEYS, key)), "layer": layer, "position": i, "size": pm.sizes[layer], "kept": kept,
         "sparsity": 1 - kept / pm.sizes[layer],
         "flops": pm.sizes[layer] * pm.flops_per_weight.get(layer, np.nan),
         "flops_nz": kept * pm.flops_per_weight.get(layer, np.nan)}
        for key, pm in found.items() for i, (layer, kept) in enumerate(pm.kept().items())
    ]
    return pd.DataFrame(rows, columns=[*KEYS, "layer", "position", "size", "kept", "sparsity", "flops", "flops_nz"])


def overlaps(found: dict[tuple, PhaseMasks], groups: dict[tuple, str]) -> pd.DataFrame:
    """Jaccard overlap of the kept weights of every two phases that `groups` puts together.

    `groups` maps a phase's KEYS to its group (e.g. the target it is the result for). Long form:
    ``group``, ``a``, ``b`` (the phases' KEYS tuples), ``jaccard``; each unordered pair once."""
    rows = []
    keys = [k for k in found if k in groups]
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            if groups[a] == groups[b]:
                rows.append({"group": groups[a], "a": a, "b": b,
                             "jaccard": masks_lib.overlap.jaccard(found[a].bits, found[b].bits)})
    return pd.DataFrame(rows, columns=["group", "a", "b", "jaccard"])
