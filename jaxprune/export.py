"""Export a checkpoint as a PyTorch state_dict of the model it mirrors, in safetensors.

Each built-in model has a PyTorch twin that loads the export with ``strict=True``:
``resnet18`` -> ``ResNet18()`` of kuangliu/pytorch-cifar models/resnet.py;
``cifar_resnet_N`` and ``cifar_vgg_N`` -> open_lth's ``models/cifar_resnet.py`` and
``models/cifar_vgg.py`` models of that name (all width-scaled when the run's width
is not the published one)::

    from safetensors.torch import load_file
    model = ResNet18()
    model.load_state_dict(load_file("OUT_DIR/model.safetensors"), strict=True)
    model.eval()  # logits equal jaxprune's eval-mode logits (float32 rounding aside)

A model registered by a user (no twin) is exported under its Flax paths:
``params/<module>/.../<leaf>`` and ``batch_stats/...`` keys, arrays in Flax layout.

ResNet18's names (Flax module -> torch module; each model's list is its
``torch_modules`` in jaxprune.models):``stem_conv`` -> ``conv1``, ``stem_bn`` ->
``bn1``, ``layerS_B/{conv1,bn1,conv2,bn2}`` -> ``layerS.B.{conv1,bn1,conv2,bn2}``,
``layerS_B/shortcut_conv`` -> ``layerS.B.shortcut.0``, ``layerS_B/shortcut_bn``
-> ``layerS.B.shortcut.1``, ``head`` -> ``linear``.

Tensors: conv ``kernel`` (kh, kw, in, out) HWIO -> ``weight`` (out, in, kh, kw)
OIHW; dense ``kernel`` (in, out) -> ``weight`` (out, in); ``bias`` -> ``bias``;
BatchNorm ``scale`` -> ``weight``, ``bias`` -> ``bias``, batch_stats ``mean`` ->
``running_mean``, ``var`` -> ``running_var``. All float32 and C-contiguous, with
pruned weights exactly +0.0. Both frameworks' eval-mode BatchNorm is
``(x - running_mean) / sqrt(running_var + 1e-5) * weight + bias``.

``num_batches_tracked`` (0-d int64) cannot be known: torch counts train-mode
forward passes over the model's whole life, jaxprune does not. The export
writes the SGD steps of the exported run up to the exported epoch (a study
phase's own steps, not its parents'), 0 when unknown. Torch reads it only for
BatchNorm with ``momentum=None``; kuangliu's model uses momentum 0.1, so it
changes neither evaluation nor further training.

OUT_DIR holds three files:

- ``model.safetensors``: the state_dict above (metadata ``format: pt``).
- ``masks.safetensors``: one bool tensor (True = kept) per prunable tensor,
  under that tensor's key and in its layout (``conv1.weight``, ...,
  ``linear.weight``). Non-prunable tensors have no mask.
- ``config.json``: ``format`` (``jaxprune-export``), the model (width, classes,
  input normalisation), the source checkpoint (path, epoch, which), its
  metrics, the run's training config, ``num_batches_tracked`` and the
  sparsity, global and per tensor (fractions in [0, 1] of weights pruned).

OUT_DIR policy: it may be new, an empty directory, or a previous export (only
these three files, with a jaxprune-export config.json), which is replaced
whole. Anything else is refused, so a user's files are never deleted. The files
are written to a temporary sibling directory that is then renamed into place:
a failure leaves OUT_DIR as it was.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import jax
import numpy as np
import safetensors.numpy

from jaxprune.training import checkpoint
from jaxprune import masks as masks_lib, models, structured
from jaxprune.training import config as config_lib
from jaxprune.data import sources as data
from jaxprune.runtime import interrupt
from jaxprune.runtime.errors import UserError
from jaxprune.runtime.faults import fault_point

FORMAT = "jaxprune-export"
FORMAT_VERSION = 1
MODEL_FILE, MASKS_FILE, CONFIG_FILE = "model.safetensors", "masks.safetensors", "config.json"
FILES = (MODEL_FILE, MASKS_FILE, CONFIG_FILE)
WHICH = ("best", "latest")

_LEAF = {("params", "kernel"): "weight", ("params", "scale"): "weight", ("params", "bias"): "bias",
         ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}
_TENSORS = {"conv": ("weight",), "conv_bias": ("weight", "bias"), "linear": ("weight", "bias"),
            "bn": ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
# Checkpoint metadata that config.json shows under its own names (or not at all).
_META_SHOWN = {"config", "metrics", "history", "epoch", "kind", "jaxprune_version"}


class ExportError(UserError):
    """A request the export cannot carry out (bad OUT_DIR, a tree that is not the model's)."""


# ---------------------------------------------------------------- names and layouts


def _layout(model: str):
    """The model's TorchLayout ((Flax module path, torch module, kind), in state_dict order), or None."""
    spec = models.get(model)
    return spec.torch_layout() if spec.torch_layout else None


def torch_keys(model: str = "resnet18") -> list[str]:
    """The state_dict keys of `model`'s PyTorch twin (any width), in its order."""
    return [f"{name}.{t}" for _, name, kind in _layout(model) for t in _TENSORS[kind]]


def torch_key(collection: str, names: tuple[str, ...] | list[str], model: str = "resnet18") -> str:
    """Torch key of a Flax leaf: ``('params', ('layer2_0', 'shortcut_conv', 'kernel'))`` ->
    ``'layer2.0.shortcut.0.weight'`` for resnet18. A model without a twin keeps its Flax
    path (``'params/layer/kernel'``). Raises ExportError for a leaf the model does not have."""
    layout = _layout(model)
    if layout is None:
        return "/".join((collection, *names))
    *modules, leaf = names
    module = {path: name for path, name, _ in layout}.get(tuple(modules))
    if module is None or (collection, leaf) not in _LEAF:
        raise ExportError(f"{collection} leaf {'/'.join(names)!r} is not part of jaxprune's {model}")
    return f"{module}.{_LEAF[collection, leaf]}"


# Axis permutations by number of dimensions; only kernels have 4 (conv) or 2 (dense) in ResNet18.
TO_TORCH_AXES = {4: (3, 2, 0, 1), 2: (1, 0)}  # HWIO -> OIHW; (in, out) -> (out, in)
FROM_TORCH_AXES = {4: (2, 3, 1, 0), 2: (1, 0)}  # their inverses


def _relayout(x, axes: dict[int, tuple[int, ...]]) -> np.ndarray:
    """`x` transposed by ``axes[x.ndim]`` (other ranks pass through), as a C-contiguous,
    writable copy (torch.from_numpy warns on read-only arrays)."""
    x = np.asarray(x)
    return np.array(x.transpose(axes.get(x.ndim, tuple(range(x.ndim)))), order="C")


def _leaves(tree) -> list[tuple[tuple[str, ...], Any]]:
    return [(masks_lib.path_names(p), x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _numpy(x) -> np.ndarray:
    """A host numpy array from a numpy, JAX or (CPU or GPU) torch array."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


# ---------------------------------------------------------------- state dicts


def to_torch_state_dict(
    params, batch_stats, masks=None, *, num_batches_tracked: int = 0, dtype=np.float32, model: str = "resnet18"
) -> dict[str, np.ndarray]:
    """`model`'s PyTorch state_dict (key -> numpy array, in its key order) from Flax variables.

    Args:
      params, batch_stats: the ``params`` and ``batch_stats`` collections of the
        registered model `model` (any width; JAX or numpy arrays).
      masks: jaxprune masks over `params` (True = kept); pruned weights are set
        to exactly +0.0. None: params are taken as they are.
      num_batches_tracked: the value of every BatchNorm's counter (0-d int64).
      dtype: of the float tensors: float32 (what exports hold), or float64 to
        keep a float64 model exact.
      model: a registered model name; one without a PyTorch twin keeps Flax
        paths and layouts.

    Floats are `dtype`, laid out as torch lays them out (see the module
    docstring), C-contiguous. Raises ExportError if the trees are not the model's.
    """
    if masks is not None:
        params = masks_lib.apply_masks(params, masks)
    layout = _layout(model)
    sd = {}
    for collection, tree in (("params", params), ("batch_stats", batch_stats)):
        for names, x in _leaves(jax.device_get(tree)):
            x = np.asarray(x, dtype) if np.issubdtype(np.asarray(x).dtype, np.floating) else np.asarray(x)
            sd[torch_key(collection, names, model)] = _relayout(x, TO_TORCH_AXES if layout else {})
    if layout is None:
        return sd
    for _, name, kind in layout:
        if kind == "bn":
            sd[f"{name}.num_batches_tracked"] = np.array(num_batches_tracked, np.int64)
    expected = torch_keys(model)
    missing = [k for k in expected if k not in sd]
    if missing:
        raise ExportError(f"the variables lack {len(missing)} of {model}'s tensors, e.g. {missing[0]}")
    return {k: sd[k] for k in expected}


def masks_state_dict(masks, model: str = "resnet18") -> dict[str, np.ndarray]:
    """The prunable leaves' masks as bool arrays (True = kept) under their tensors' keys,
    in the export's layout (the same shapes as in `to_torch_state_dict`). 0-d masks (not prunable) are left out."""
    out = {}
    twin = _layout(model) is not None
    for names, m in _leaves(jax.device_get(masks)):
        m = np.asarray(m)
        if m.dtype != np.bool_:
            raise ExportError(f"mask {'/'.join(names)!r} is {m.dtype}, not bool")
        if m.ndim:
            out[torch_key("params", names, model)] = _relayout(m, TO_TORCH_AXES if twin else {})
    return out


def from_torch_state_dict(sd: dict[str, Any], width: int, model: str = "resnet18") -> tuple[dict, dict]:
    """(params, batch_stats) of the registered `model` (width `width`) from its PyTorch twin's state_dict.

    `sd` maps keys to numpy arrays or torch tensors (e.g. ``model.state_dict()``);
    the class count is read from the output layer's bias. Returns nested dicts of
    float32 numpy arrays in Flax layout (HWIO, (in, out)); the
    ``num_batches_tracked`` counters are dropped. Strict like torch: a missing,
    unexpected or wrongly shaped tensor raises ExportError. The exact inverse
    of `to_torch_state_dict` without masks.
    """
    from jaxprune.models import init_variables  # late: flax is needed only here

    if _layout(model) is None:
        raise ExportError(f"{model} has no PyTorch twin to import from")
    expected = torch_keys(model)
    missing = [k for k in expected if k not in sd]
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise ExportError(
            f"not a {model} state_dict: {len(missing)} missing keys {missing[:2]}, "
            f"{len(unexpected)} unexpected {unexpected[:2]}"
        )
    head = next(name for _, name, kind in reversed(_layout(model)) if kind == "linear")
    num_classes = int(np.shape(sd[f"{head}.bias"])[0])
    module = models.get(model).build(num_classes, width)
    shapes = jax.eval_shape(lambda: init_variables(module, 0))
    out = {}
    for collection in ("params", "batch_stats"):
        leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes[collection])
        arrays = []
        for path, shape in leaves:
            key = torch_key(collection, masks_lib.path_names(path), model)
            x = _relayout(_numpy(sd[key]).astype(np.float32), FROM_TORCH_AXES)
            if x.shape != shape.shape:
                raise ExportError(
                    f"{key} has shape {tuple(_numpy(sd[key]).shape)}, which a width-{width} {model} does not"
                )
            arrays.append(x)
        out[collection] = jax.tree_util.tree_unflatten(treedef, arrays)
    return out["params"], out["batch_stats"]


# ---------------------------------------------------------------- checkpoints


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_for_export(path: str | os.PathLike, which: str = "latest") -> tuple[Any, Any, Any, dict, dict]:
    """(params, batch_stats, masks, config dict, checkpoint metadata) of a checkpoint, on the host.

    `path` is a run or study-phase directory, its checkpoints/ folder, or one
    epoch's folder (which then overrides `which`). The one place the export
    reads checkpoints. Raises CheckpointError for a path that is not one.
    """
    from jaxprune.training import train  # late: the training stack (optax, data) is needed only here

    folder, epoch = checkpoint.locate(path, which)
    meta = checkpoint.read_meta(folder, epoch)
    if not isinstance(meta.get("config"), dict):
        raise checkpoint.CheckpointError(f"{folder / str(epoch)} has no training config in its metadata")
    cfg = config_lib.from_dict(config_lib.TrainConfig, meta["config"])
    # Restore onto one device whatever the run trained on, as `jaxprune evaluate` does.
    abstract = train.abstract_state(dataclasses.replace(cfg, devices=1))
    model, _ = checkpoint.restore_model(folder, epoch, checkpoint.abstract_model(abstract))
    model = jax.device_get(model)
    return model["params"], model["batch_stats"], model["masks"], meta["config"], meta


def sparsity_summary(masks, mask_sd: dict[str, np.ndarray] | None = None, model: str = "resnet18") -> dict[str, Any]:
    """Global and per-tensor sparsity (fraction of prunable weights pruned, in [0, 1]) by exported key."""
    report = masks_lib.sparsity_report(masks)
    mask_sd = masks_state_dict(masks, model) if mask_sd is None else mask_sd
    total = report.total
    layers = {}
    for row in report.rows:
        key = torch_key("params", row.path.split("/"), model)
        layers[key] = {"path": row.path, "shape": list(mask_sd[key].shape), "kept": row.kept,
                       "total": row.total, "sparsity": row.sparsity}
    return {"global": total.sparsity, "kept": total.kept, "total": total.total, "layers": layers}


def _is_previous_export(out: Path) -> bool:
    if not {p.name for p in out.iterdir()} <= set(FILES):
        return False
    try:
        info = json.loads((out / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("format") == FORMAT


def check_out_dir(out: Path) -> None:
    """Raises ExportError unless `out` is new, an empty directory, or a previous export."""
    ancestor = next((p for p in (out, *out.parents) if p.exists()), None)
    if ancestor is not None and not ancestor.is_dir():
        raise ExportError(f"{ancestor} is a file; OUT_DIR must be a directory")
    if ancestor == out and any(out.iterdir()) and not _is_previous_export(out):
        raise ExportError(
            f"{out} is not empty and holds no previous export; give a new or empty OUT_DIR"
        )


def _clean_leftovers(out: Path) -> None:
    """What a killed export left beside OUT_DIR: a previous export caught between its two
    renames goes back in place; half-written ones are removed."""
    for p in sorted(out.parent.glob(f".{out.name}.export-*"), key=lambda p: not p.name.endswith("-old")):
        if p.name.endswith("-old") and not out.exists():
            os.rename(p, out)
        else:
            shutil.rmtree(p, ignore_errors=True)


def _write(out: Path, model_sd, mask_sd, info: dict, file_metadata: dict[str, str]) -> None:
    """Writes the three files into a temporary sibling of `out`, then renames it to `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(out)
    tmp = out.parent / f".{out.name}.export-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    old = None
    try:
        safetensors.numpy.save_file(model_sd, str(tmp / MODEL_FILE), metadata=file_metadata)
        fault_point("export-file")
        safetensors.numpy.save_file(mask_sd, str(tmp / MASKS_FILE), metadata=file_metadata)
        fault_point("export-file")
        (tmp / CONFIG_FILE).write_text(json.dumps(info, indent=2) + "\n")
        fault_point("export-file")
        # safetensors writes 0600; every file of an export gets the mode config.json has.
        mode = 0o666 & ~_umask()
        for name in (MODEL_FILE, MASKS_FILE, CONFIG_FILE):
            os.chmod(tmp / name, mode)
        interrupt.check()  # a stop swallowed on the way must not be followed by the export in place
        if out.exists():  # empty, or a previous export: check_out_dir said so
            old = tmp.with_name(tmp.name + "-old")
            os.rename(out, old)
        os.rename(tmp, out)
    except BaseException:
        if old is not None and not out.exists():
            os.rename(old, out)  # put the previous export back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export(path: str | os.PathLike, out_dir: str | os.PathLike, which: str = "latest") -> dict[str, Any]:
    """Writes OUT_DIR/{model,masks}.safetensors and config.json from a checkpoint (see the module docstring).

    `path`: a run or study-phase directory, its checkpoints/ folder, or one
    epoch's folder (which overrides `which`). `which`: ``best`` (highest test
    accuracy) or ``latest`` epoch. Returns what config.json holds. Raises
    CheckpointError or ExportError, with OUT_DIR untouched, on a user's mistake.
    """
    if which not in WHICH:
        raise ExportError(f"unknown checkpoint choice {which!r}; use best or latest")
    out = Path(out_dir)
    check_out_dir(out)
    params, batch_stats, masks, cfg, meta = load_for_export(path, which)
    run_cfg = config_lib.from_dict(config_lib.TrainConfig, cfg)
    spec = models.get(run_cfg.model)
    metrics = meta.get("metrics") or {}
    steps = int(metrics.get("step", 0))
    model_sd = to_torch_state_dict(params, batch_stats, masks, num_batches_tracked=steps, model=spec.name)
    mask_sd = masks_state_dict(masks, spec.name)
    mean, std = data.NORMALIZATIONS[run_cfg.normalization]
    torch_names = {path: name for path, name, _ in _layout(spec.name) or []}
    info = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": {
            "name": spec.name,
            "architecture": spec.torch or f"{spec.name}, a registered Flax model (keys are its Flax paths)",
            "width": run_cfg.width,
            "num_classes": run_cfg.num_classes,
            "input": "float32 NCHW (N, 3, 32, 32): (pixel / 255 - mean) / std per RGB channel"
                     if spec.torch else "float32 NHWC (N, 32, 32, 3): (pixel / 255 - mean) / std per RGB channel",
            "mean": list(mean),
            "std": list(std),
            # Channel-pruned: channels kept per group, by producer layer (build the twin with them).
            **({"channels": list(run_cfg.channels), "channel_groups": {torch_names.get(path, "/".join(path)): int(n)
                for path, n in zip(structured.producers(spec.name, params), run_cfg.channels)}} if run_cfg.channels else {}),
        },
        "source": {"checkpoint": str(Path(path).absolute()), "epoch": meta.get("epoch"), "which": which},
        "metrics": metrics,
        "num_batches_tracked": steps,
        "sparsity": sparsity_summary(masks, mask_sd, spec.name),
        "config": cfg,
        "run": {k: v for k, v in meta.items() if k not in _META_SHOWN},  # e.g. a study phase
        "jaxprune_version": meta.get("jaxprune_version"),
    }
    file_metadata = {"format": "pt", "source": FORMAT, "epoch": str(meta.get("epoch"))}
    try:
        _write(out, model_sd, mask_sd, info, file_metadata)
    except OSError as e:
        raise ExportError(f"cannot write {out}: {e.strerror or e}") from e
    return info
