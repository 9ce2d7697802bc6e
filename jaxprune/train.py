"""Masked SGD training: the train state, a pure jitted epoch, evaluation, and the run driver.

The whole training split lives on the device. An epoch is one dispatch: a
``lax.scan`` over its steps, each gathering its batch by a permutation drawn
from ``fold_in(key, epoch)``, augmenting with ``fold_in(key, step)`` and
taking one SGD step. So any epoch is reproducible from the state alone, and a
resumed run retraces an uninterrupted one exactly.

Pruned weights and their momentum are exactly 0 after every update: the
updated params and the momentum are masked in the same fused elementwise pass
as the update, which (the optimiser being elementwise) is exactly the update
of a masked gradient.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxprune
from jaxprune import checkpoint, config as config_lib, data, devices, masks as masks_lib
from jaxprune.models import ResNet18, init_variables

METRIC_FIELDS = ("epoch", "step", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "seconds")


@flax.struct.dataclass
class TrainState:
    """Everything an epoch reads and writes. A pytree; saved whole by Orbax."""

    params: Any
    batch_stats: Any
    opt_state: Any
    masks: Any  # bool pytree mirroring params: True = kept (see jaxprune.masks)
    step: jax.Array  # int32: SGD steps taken so far in this run
    key: jax.Array  # uint32 key data of the run's PRNG key


def build_model(cfg: config_lib.TrainConfig) -> ResNet18:
    return ResNet18(num_classes=data.NUM_CLASSES, width=cfg.width, dtype=jnp.dtype(cfg.dtype))


def steps_per_epoch(cfg: config_lib.TrainConfig, n_train: int) -> int:
    return n_train // cfg.batch_size


def learning_rate(cfg: config_lib.TrainConfig, total_steps: int) -> optax.Schedule:
    if cfg.schedule == "cosine":
        return optax.cosine_decay_schedule(cfg.lr, max(total_steps, 1))
    return optax.constant_schedule(cfg.lr)


def make_optimizer(cfg: config_lib.TrainConfig, total_steps: int) -> optax.GradientTransformation:
    """torch.optim.SGD(lr, momentum, weight_decay): decay is added to the gradient before momentum."""
    return optax.chain(
        optax.add_decayed_weights(cfg.weight_decay),
        optax.sgd(learning_rate(cfg, total_steps), momentum=cfg.momentum),
    )


def _new_state(variables: dict, tx: optax.GradientTransformation, seed: int, masks: Any = None) -> TrainState:
    """The state at step 0 (traceable, so `abstract_state` can take its shapes)."""
    params = variables["params"]
    masks = masks_lib.init_masks(params) if masks is None else masks
    params = masks_lib.apply_masks(params, masks)
    return TrainState(
        params=params,
        batch_stats=variables["batch_stats"],
        opt_state=tx.init(params),
        masks=masks,
        step=jnp.zeros((), jnp.int32),
        key=jax.random.key_data(jax.random.key(seed)),
    )


def create_train_state(
    variables: dict, tx: optax.GradientTransformation, seed: int, masks: Any = None, mesh=None
) -> TrainState:
    """A fresh optimiser over a copy of `variables`, params masked so pruned weights start at 0."""
    state = _new_state(variables, tx, seed, masks)
    # Fresh buffers, since the train step donates (consumes) its state while
    # `variables` may be needed again (a parent pruned to several targets);
    # committed, so the step's outputs match its inputs and it never recompiles.
    state = jax.tree.map(lambda x: jnp.array(x, copy=True), state)
    return devices.put_replicated(state, mesh if mesh is not None else devices.mesh())


# ---------------------------------------------------------------- pure steps


@flax.struct.dataclass
class StepFns:
    """The jitted functions of one (model, optimiser, batch size) combination."""

    train_epoch: Callable = flax.struct.field(pytree_node=False)
    train_chunk: Callable = flax.struct.field(pytree_node=False)
    evaluate: Callable = flax.struct.field(pytree_node=False)
    train_step: Callable = flax.struct.field(pytree_node=False)


def dispatch_steps(cfg: config_lib.TrainConfig, steps: int) -> int:
    """SGD steps per dispatch: cfg.steps_per_dispatch, or by platform when 0."""
    if cfg.steps_per_dispatch > 0:
        return min(cfg.steps_per_dispatch, steps)
    # XLA:CPU runs convolutions ~7x slower inside a loop than outside one;
    # accelerators gain from dispatching the whole epoch at once.
    return 1 if jax.default_backend() == "cpu" else steps


def _keys(state: TrainState):
    key = jax.random.wrap_key_data(state.key)
    return jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)  # (data order, augmentation)


@functools.lru_cache(maxsize=8)
def step_fns_for(cfg: config_lib.TrainConfig, total_steps: int, runs: bool = False) -> StepFns:
    """The compiled functions for a config, shared by every run (and pruning
    round) with the same shapes and recipe, so none compiles twice."""
    return make_step_fns(build_model(cfg), make_optimizer(cfg, total_steps), cfg, runs=runs)


def compile_key(cfg: config_lib.TrainConfig) -> config_lib.TrainConfig:
    # Fields that do not reach the compiled code.
    return dataclasses.replace(cfg, data="", train_subset=0, epochs=1, seed=0, progress=False)


def make_step_fns(model, tx, cfg: config_lib.TrainConfig, runs: bool = False, masked: bool = True) -> StepFns:
    """Builds train_step, train_epoch (jitted, state donated) and evaluate (jitted).

    With runs=True every function takes states stacked along a leading run
    axis (independent runs, each with its own key, masks and weights) and
    `jax.vmap`s over it; the data set is shared. masked=False drops the
    masking from the update (only to measure what masking costs).
    """

    mesh = devices.mesh(cfg.devices)

    def split(x, axis=0):
        # Data parallelism: the batch is divided among the devices; XLA adds
        # the all-reduces. A no-op on one device.
        if mesh.size == 1:
            return x
        return jax.lax.with_sharding_constraint(x, devices.batch_split(mesh, axis))

    def train_step(state: TrainState, images, labels):
        """One masked SGD step on a uint8 batch. Returns (state, (loss_sum, correct))."""
        images, labels = split(images), split(labels)
        _, aug_key = _keys(state)
        if cfg.augment:
            images = data.augment(jax.random.fold_in(aug_key, state.step), images)
        x = data.normalize(images)

        def loss_fn(params):
            logits, updates = model.apply(
                {"params": params, "batch_stats": state.batch_stats},
                x,
                train=True,
                mutable=["batch_stats"],
            )
            losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
            return losses.mean(), (losses.sum(), logits, updates["batch_stats"])

        grads, (loss_sum, logits, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
        # The optimiser is elementwise, so masking the new params and momentum
        # gives exactly the step of a masked gradient, in one fused pass.
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if masked:
            params = masks_lib.apply_masks(params, state.masks)
            # Momentum of pruned weights: 0, even if the optimiser state predates the mask.
            opt_state = optax.tree_utils.tree_map_params(
                tx,
                masks_lib.zero_pruned,
                opt_state,
                state.masks,
                transform_non_params=lambda v: v,
            )
        correct = jnp.sum(jnp.argmax(logits, -1) == labels)
        new = state.replace(
            params=params, batch_stats=batch_stats, opt_state=opt_state, step=state.step + 1
        )
        return new, (loss_sum, correct)

    def epoch_batches(state: TrainState, epoch, n: int):
        """(steps, batch) indices into the training split: a fresh permutation per epoch."""
        order_key, _ = _keys(state)
        perm = jax.random.permutation(jax.random.fold_in(order_key, epoch), n)
        steps = n // cfg.batch_size
        return perm[: steps * cfg.batch_size].reshape(steps, cfg.batch_size)

    def train_chunk(state: TrainState, images, labels, batches):
        """A scan of train steps over the rows of `batches`: one dispatch."""

        def body(carry, idx):
            state, loss_sum, correct = carry
            state, (l, c) = train_step(state, images[idx], labels[idx])
            return (state, loss_sum + l, correct + c), None

        init = (state, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
        if batches.shape[0] == 1:  # no loop at all: XLA:CPU is slow inside one
            return body(init, batches[0])[0]
        (state, loss_sum, correct), _ = jax.lax.scan(body, init, batches)
        return state, loss_sum, correct

    def train_epoch(state: TrainState, images, labels, epoch: int):
        """One pass over a fresh permutation (a partial last batch is dropped).

        Runs `dispatch_steps(cfg)` steps per dispatch; metrics stay on the
        device until the caller reads them.
        """
        n = images.shape[0]
        batches = batches_fn(state, epoch, n)  # (steps, batch), or (runs, steps, batch)
        steps = batches.shape[-2]
        chunk = dispatch_steps(cfg, steps)
        loss_sum, correct = 0.0, 0
        for start in range(0, steps, chunk):
            state, l, c = chunk_fn(state, images, labels, batches[..., start : start + chunk, :])
            loss_sum, correct = loss_sum + l, correct + c
        seen = steps * cfg.batch_size
        return state, {"train_loss": loss_sum / seen, "train_acc": correct / seen}

    def evaluate(params, batch_stats, masks, images, labels):
        """Loss and accuracy over every image (the last batch is padded, the padding ignored)."""
        n = images.shape[0]
        b = -(-min(cfg.eval_batch_size, n) // mesh.size) * mesh.size  # splits evenly over devices
        nb = -(-n // b)
        pad = nb * b - n
        images = split(jnp.pad(images, ((0, pad), (0, 0), (0, 0), (0, 0))).reshape(nb, b, *images.shape[1:]), 1)
        labels = split(jnp.pad(labels, (0, pad)).reshape(nb, b), 1)
        valid = split((jnp.arange(nb * b) < n).reshape(nb, b), 1)
        variables = {"params": masks_lib.apply_masks(params, masks), "batch_stats": batch_stats}

        def body(carry, batch):
            x, y, v = batch
            logits = model.apply(variables, data.normalize(x), train=False)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
            hit = jnp.argmax(logits, -1) == y
            return (carry[0] + jnp.sum(loss * v), carry[1] + jnp.sum(hit & v)), None

        (loss, correct), _ = jax.lax.scan(body, (jnp.zeros(()), jnp.zeros((), jnp.int32)), (images, labels, valid))
        return {"test_loss": loss / n, "test_acc": correct / n}

    def batches_of(state, epoch, n):
        f = functools.partial(epoch_batches, n=n)
        return (jax.vmap(f, in_axes=(0, None)) if runs else f)(state, epoch)

    # New names: the closures above must keep calling the per-run versions.
    step_fn, chunk_one, eval_fn = train_step, train_chunk, evaluate
    if runs:
        step_fn = jax.vmap(train_step, in_axes=(0, None, None))
        chunk_one = jax.vmap(train_chunk, in_axes=(0, None, None, 0))
        eval_fn = jax.vmap(evaluate, in_axes=(0, 0, 0, None, None))
    batches_fn = jax.jit(batches_of, static_argnums=2)
    chunk_fn = jax.jit(chunk_one, donate_argnums=0)
    return StepFns(
        train_epoch=train_epoch, evaluate=jax.jit(eval_fn), train_step=jax.jit(step_fn), train_chunk=chunk_fn
    )


# ---------------------------------------------------------------- the driver


@dataclasses.dataclass
class RunResult:
    state: TrainState
    history: list[dict[str, Any]]  # one row per epoch, METRIC_FIELDS

    @property
    def best_test_acc(self) -> float:
        return max(r["test_acc"] for r in self.history)


class RunDirError(ValueError):
    """A run directory that belongs to a different run."""


def claim_workdir(workdir: Path, cfg, extra: dict | None = None) -> None:
    """Writes config.json, or checks that the one there describes the same run (else RunDirError)."""
    # Through JSON, so tuples compare equal to the lists read back.
    current = json.loads(json.dumps({"config": config_lib.identity(cfg), **(extra or {})}))
    path = workdir / "config.json"
    if path.exists():
        diffs = config_lib.differences(json.loads(path.read_text()).get("identity", {}), current)
        if diffs:
            raise RunDirError(
                f"{workdir} holds a different run ({'; '.join(diffs[:3])}); "
                "use another --workdir or the same settings"
            )
        return
    workdir.mkdir(parents=True, exist_ok=True)
    record = {"config": config_lib.to_dict(cfg), "identity": current, "jaxprune_version": jaxprune.__version__}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)


def write_metric_logs(workdir: Path, history: list[dict[str, Any]]) -> None:
    """Rewrites metrics.csv and metrics.jsonl from the history (the checkpoint's, after a resume)."""
    with open(workdir / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
        w.writeheader()
        w.writerows({k: r[k] for k in METRIC_FIELDS} for r in history)
    with open(workdir / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in history)


def append_metric_logs(workdir: Path, row: dict[str, Any]) -> None:
    with open(workdir / "metrics.csv", "a", newline="") as f:
        csv.DictWriter(f, fieldnames=METRIC_FIELDS).writerow({k: row[k] for k in METRIC_FIELDS})
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def abstract_state(cfg: config_lib.TrainConfig, tx=None) -> TrainState:
    """Shapes, dtypes and (replicated) shardings of a TrainState for `cfg`, computing nothing.

    The restore target for checkpoints: a checkpoint written on any device
    restores onto the devices this process uses.
    """
    model = build_model(cfg)
    tx = tx or make_optimizer(cfg, 1)

    def make():
        return _new_state(model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False), tx, 0)

    return devices.abstract_replicated(jax.eval_shape(make), devices.mesh(cfg.devices))


@dataclasses.dataclass
class RunSpec:
    """One run for `train_runs`: its config, directory and starting point."""

    cfg: config_lib.TrainConfig
    workdir: Path
    start: dict | None = None  # {'params', 'batch_stats'}; else a fresh init from cfg.seed
    masks: Any = None  # pruning masks to train under; else all kept
    meta: dict[str, Any] | None = None  # extra JSON in every checkpoint's metadata


class _Run:
    """One run's directory: its claim, checkpoints, metric logs and history."""

    def __init__(self, spec: RunSpec, tx, mesh):
        self.spec, self.cfg, self.workdir = spec, spec.cfg, Path(spec.workdir)
        claim_workdir(self.workdir, self.cfg)
        self.ckpts = checkpoint.RunCheckpoints(self.workdir / "checkpoints")
        latest = self.ckpts.latest()
        if latest is not None:
            self.state, saved = self.ckpts.restore(latest, abstract_state(self.cfg, tx))
            self.history = saved["history"]
        else:
            start = spec.start if spec.start is not None else init_variables(build_model(self.cfg), self.cfg.seed)
            self.state = create_train_state(start, tx, self.cfg.seed, spec.masks, mesh)
            self.history = []
        write_metric_logs(self.workdir, self.history)

    @property
    def done(self) -> bool:
        return len(self.history) >= self.cfg.epochs

    def record(self, state: TrainState, row: dict[str, Any]) -> None:
        self.state = state
        self.history.append(row)
        append_metric_logs(self.workdir, row)
        self.ckpts.save(row["epoch"], state, {
            **(self.spec.meta or {}),
            "metrics": row,
            "history": self.history,
            "config": config_lib.to_dict(self.cfg),
            "jaxprune_version": jaxprune.__version__,
        })


def _stack(states):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def _unstack(stacked, n):
    return [jax.tree.map(lambda x: x[i], stacked) for i in range(n)]


def train_runs(
    specs: list[RunSpec],
    *,
    dataset: data.Dataset | None = None,
    on_epoch: Callable[[RunSpec, dict[str, Any]], None] | None = None,
    run_axis: int | None = None,
) -> list[RunResult]:
    """Trains several independent runs at once, `jax.vmap`ped over a run axis.

    The runs share the recipe (configs equal but for the seed) and the data
    set on the device; each has its own key, weights, masks, directory and
    checkpoints, and each resumes on its own. Runs that a crash left at
    different epochs first catch up.

    run_axis (default: the number of runs) is the size of the vmapped run
    axis; runs that are fewer (a lagging subset after a crash, a study's last
    group) are padded with throwaway copies. XLA rounds a convolution batched
    over N runs slightly differently from a single one, and differently for
    each N, but identically whatever a run's partners and position: so with a
    fixed run_axis results depend neither on the grouping nor on crashes and
    resumes. run_axis=1 trains each run with the plain program, as
    `train_and_evaluate` does.
    """
    run_axis = run_axis or len(specs)
    if run_axis < len(specs):
        raise ValueError(f"run_axis {run_axis} is smaller than the {len(specs)} runs")
    batched = run_axis > 1
    if not specs:
        return []
    for spec in specs:
        spec.cfg.validate()
    cfg = specs[0].cfg
    if any(compile_key(s.cfg) != compile_key(cfg) or s.cfg.epochs != cfg.epochs for s in specs):
        raise config_lib.ConfigError("runs trained together must share their recipe (all but the seed)")
    if dataset is None:
        dataset = data.load(cfg.data)
    dataset = dataset.subset(cfg.train_subset)
    n_steps = steps_per_epoch(cfg, len(dataset.train_labels))
    if n_steps == 0:
        raise config_lib.ConfigError(
            f"--batch-size {cfg.batch_size} is larger than the {len(dataset.train_labels)} training images"
        )
    total = n_steps * cfg.epochs
    tx = make_optimizer(cfg, total)
    schedule = learning_rate(cfg, total)
    mesh = devices.mesh(cfg.devices)
    runs: list[_Run] = []
    try:
        for spec in specs:  # each claims its directory only now, so bad input writes nothing
            runs.append(_Run(spec, tx, mesh))
        # The whole data set lives on every device; batches are gathered there.
        train_x, train_y, test_x, test_y = devices.put_replicated(
            (dataset.train_images, dataset.train_labels, dataset.test_images, dataset.test_labels), mesh
        )
        bar = _progress(cfg, runs)
        group, stacked = None, None
        while not all(r.done for r in runs):
            epoch = min(len(r.history) for r in runs if not r.done) + 1
            members = tuple(i for i, r in enumerate(runs) if len(r.history) + 1 == epoch)
            t0 = time.perf_counter()
            if not batched:
                fns = step_fns_for(compile_key(cfg), total)
                states, metrics = [], []
                for i in members:
                    state, train_m = fns.train_epoch(runs[i].state, train_x, train_y, epoch)
                    test_m = fns.evaluate(state.params, state.batch_stats, state.masks, test_x, test_y)
                    states.append(state)
                    metrics.append({**train_m, **test_m})
            else:
                fns = step_fns_for(compile_key(cfg), total, runs=True)
                if group != members:
                    padded = [*members, *[members[0]] * (run_axis - len(members))]
                    group, stacked = members, _stack([runs[i].state for i in padded])
                stacked, train_m = fns.train_epoch(stacked, train_x, train_y, epoch)
                test_m = fns.evaluate(stacked.params, stacked.batch_stats, stacked.masks, test_x, test_y)
                states = _unstack(stacked, len(members))
                metrics = [{k: v[j] for k, v in {**train_m, **test_m}.items()} for j in range(len(members))]
            metrics = jax.device_get(metrics)  # the epoch's one host sync
            seconds = (time.perf_counter() - t0) / len(members)
            for i, state, m in zip(members, states, metrics):
                row = {
                    "epoch": epoch,
                    "step": epoch * n_steps,
                    "lr": float(schedule(epoch * n_steps - 1)),
                    **{k: float(v) for k, v in m.items()},
                    "seconds": seconds,
                }
                runs[i].record(state, row)
                if on_epoch:
                    on_epoch(runs[i].spec, row)
                bar.update(1)
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", test_acc=f"{100 * row['test_acc']:.2f}%")
        bar.close()
    finally:
        for r in runs:
            r.ckpts.close()
    return [RunResult(r.state, r.history) for r in runs]


def train_and_evaluate(
    cfg: config_lib.TrainConfig,
    workdir: str | Path,
    *,
    dataset: data.Dataset | None = None,
    start: dict | None = None,
    masks: Any = None,
    meta: dict[str, Any] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> RunResult:
    """Trains for cfg.epochs in `workdir`, checkpointing every epoch; a rerun resumes.

    Args:
      cfg: the run's config (validated here).
      workdir: the run's directory: config.json, metrics.csv/.jsonl, checkpoints/.
      dataset: data already loaded (else loaded from cfg.data).
      start: {'params', 'batch_stats'} to start from (else a fresh init from cfg.seed).
      masks: pruning masks to train under (else all kept).
      meta: extra JSON saved in every checkpoint's metadata (e.g. the pruning round).
      on_epoch: called with each new epoch's metrics row.
    """
    spec = RunSpec(cfg, Path(workdir), start, masks, meta)
    callback = (lambda _, row: on_epoch(row)) if on_epoch else None
    return train_runs([spec], dataset=dataset, on_epoch=callback)[0]


def _progress(cfg, runs: list[_Run]):
    from tqdm.auto import tqdm

    desc = runs[0].workdir.name if len(runs) == 1 else f"{runs[0].workdir.parent.name}/... ({len(runs)} runs)"
    return tqdm(
        total=sum(r.cfg.epochs for r in runs), initial=sum(len(r.history) for r in runs),
        desc=desc, unit="epoch", disable=not cfg.progress, leave=True,
    )
