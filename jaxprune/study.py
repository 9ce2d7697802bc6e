"""The pruning study: schedules as pure plans, and the driver that walks a plan.

A plan is the list of every training phase the study needs, computed before
any work from exact pruning counts: the baseline, then per (schedule, method,
target) chain its rounds, each pruning ``amount`` from its parent's final
weights and retraining. The driver runs the phases in order:

    parent's final state -> prune_global -> train_and_evaluate -> checkpoints

Every phase lives in its own directory, named by what it is
(``WORKDIR/iterative-random-0.90/round-07/``), and is resumable: a finished
phase is skipped, a partial one continues from its last checkpoint, a missing
one recomputes its (deterministic) masks from its parent. ``results.csv`` is
rebuilt from the phases' own metrics as each group of phases starts training
(after a resume has settled them) and at the end, and each epoch appends its
row in between; so it never holds a row twice or a row for work that was
lost, and its rows are in plan order once the study ends.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from jaxprune import checkpoint, config as config_lib, data, masks as masks_lib, train

RESULT_FIELDS = (
    "schedule", "method", "target", "round", "sparsity", "epoch",
    "test_acc", "train_loss", "train_acc", "seconds",
)


class StudyError(ValueError):
    """A study that cannot run as asked; the message says why."""


@dataclasses.dataclass(frozen=True)
class Phase:
    """One training phase of the study.

    schedule: "baseline", "oneshot" or "iterative".
    target: the chain's target sparsity (0 for the baseline).
    round: 1-based pruning round within the chain (0 for the baseline).
    amount: the float given to prune_global: the fraction of the parent's
      remaining weights pruned before this phase trains.
    sparsity: the global sparsity during this phase (exact, from the counts).
    parent: the directory name of the phase whose final weights are pruned.
    """

    schedule: str
    method: str
    target: float
    round: int
    amount: float
    sparsity: float
    parent: str | None

    @property
    def chain(self) -> str:
        if self.schedule == "baseline":
            return "baseline"
        return f"{self.schedule}-{self.method}-{self.target:.2f}"

    @property
    def name(self) -> str:
        return "baseline" if self.schedule == "baseline" else f"{self.chain}/round-{self.round:02d}"


def prunable_total(cfg: config_lib.TrainConfig) -> int:
    """Prunable weights of the model `cfg` builds (shapes only, no compute)."""
    shapes = train.abstract_state(cfg).params
    flags = masks_lib.prunable(shapes)
    return sum(math.prod(p.shape) for p, f in zip(jax.tree.leaves(shapes), jax.tree.leaves(flags)) if f)


def iterative_sparsities(total: int, step: float, target: float) -> list[float]:
    """Global sparsity after each iterative round until it reaches `target`, from exact counts."""
    remaining, out = total, []
    while not out or out[-1] < target:
        remaining -= round(step * remaining)  # what prune_global removes
        out.append(1 - remaining / total)
        if len(out) > 10_000:
            raise StudyError(f"--step {step} never reaches target {target}")
    return out


def plan(cfg: config_lib.StudyConfig, total: int) -> list[Phase]:
    """Every phase of the study, in the order the driver runs them."""
    phases = []
    if not cfg.baseline:
        phases.append(Phase("baseline", "", 0.0, 0, 0.0, 0.0, None))
    root = "baseline"
    for method in cfg.methods:
        if "oneshot" in cfg.schedules:
            for t in cfg.targets:
                k = round(t * total)
                phases.append(Phase("oneshot", method, t, 1, t, k / total, root))
        if "iterative" in cfg.schedules:
            chains = [max(cfg.targets)] if cfg.shared_chain else sorted(cfg.targets)
            for t in chains:
                parent = root
                for r, s in enumerate(iterative_sparsities(total, cfg.step, t), start=1):
                    phase = Phase("iterative", method, t, r, cfg.step, s, parent)
                    phases.append(phase)
                    parent = phase.name
    return phases


def derived_seed(base: int, *tags: Any) -> int:
    """A 31-bit seed from the study's seed and a phase's identity (stable across runs)."""
    digest = hashlib.sha256(json.dumps([base, *tags]).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def phase_config(cfg: config_lib.StudyConfig, phase: Phase) -> config_lib.TrainConfig:
    if phase.schedule == "baseline":
        return cfg.phase(cfg.baseline_epochs, cfg.train.seed)
    return cfg.phase(cfg.round_epochs, derived_seed(cfg.train.seed, phase.chain, phase.round))


def pruning_key(cfg: config_lib.StudyConfig, phase: Phase) -> jax.Array:
    # Separate chains are independent replicates (as in the write-up), so each
    # chain draws its own random masks.
    return jax.random.key(derived_seed(cfg.train.seed, "prune", phase.chain, phase.round))


# ---------------------------------------------------------------- the driver


@dataclasses.dataclass
class Final:
    """A finished phase's weights: what its children prune and retrain."""

    params: Any
    batch_stats: Any
    masks: Any


def _finished(workdir: Path, phase_cfg: config_lib.TrainConfig) -> bool:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return False
    with checkpoint.RunCheckpoints(workdir / "checkpoints") as ck:
        return ck.latest() == phase_cfg.epochs


def load_final(workdir: Path, phase_cfg: config_lib.TrainConfig) -> Final:
    folder = workdir / "checkpoints"
    with checkpoint.RunCheckpoints(folder) as ck:
        state, _ = ck.restore(ck.latest(), train.abstract_state(phase_cfg))
    return Final(state.params, state.batch_stats, state.masks)


def load_baseline(path: str, cfg: config_lib.StudyConfig) -> Final:
    """A user-given baseline checkpoint, checked against the study's model."""
    folder, epoch = checkpoint.locate(path)
    meta = checkpoint.read_meta(folder, epoch)
    saved = config_lib.from_dict(config_lib.TrainConfig, meta.get("config", {}))
    if saved.width != cfg.train.width:
        raise StudyError(
            f"baseline {path} is a width-{saved.width} ResNet18 but the study builds width "
            f"{cfg.train.width}: its shapes don't match the model (pass --width {saved.width})"
        )
    try:
        state, _ = checkpoint.restore(folder, epoch, train.abstract_state(saved))
    except Exception as e:  # orbax reports shape mismatches in several ways
        raise StudyError(f"baseline {path} does not match the model: {str(e).splitlines()[0]}") from e
    return Final(state.params, state.batch_stats, state.masks)


def _result_row(phase: Phase, m: dict[str, Any]) -> dict[str, Any]:
    """One results.csv row from a phase and one of its metrics rows."""
    return {
        "schedule": phase.schedule, "method": phase.method, "target": phase.target,
        "round": phase.round, "sparsity": round(phase.sparsity, 6), "epoch": m["epoch"],
        "test_acc": m["test_acc"], "train_loss": m["train_loss"], "train_acc": m["train_acc"],
        "seconds": round(m["seconds"], 3),
    }


def rebuild_results(workdir: Path, phases: list[Phase]) -> int:
    """Writes WORKDIR/results.csv from the phases' metrics, in plan order; returns the row count."""
    rows = []
    for phase in phases:
        path = workdir / phase.name / "metrics.jsonl"
        if path.exists():
            rows.extend(_result_row(phase, json.loads(line)) for line in path.read_text().splitlines())
    tmp = workdir / "results.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=RESULT_FIELDS)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(workdir / "results.csv")
    return len(rows)


def append_result(workdir: Path, phase: Phase, m: dict[str, Any]) -> None:
    """Appends one epoch's row to WORKDIR/results.csv (O(1), unlike a rebuild)."""
    with open(workdir / "results.csv", "a", newline="") as f:
        csv.DictWriter(f, fieldnames=RESULT_FIELDS).writerow(_result_row(phase, m))


def run_study(cfg: config_lib.StudyConfig, workdir: str | Path, *, log=print) -> Path:
    """Runs (or resumes) every phase of the study in `workdir`; returns results.csv's path.

    Phases run in plan order; with ``parallel_runs`` N > 1, up to N phases
    whose parents are finished and whose epochs agree train together, vmapped
    (see `train.train_runs`). A group's results are reproducible, also across
    a crash, except when the crash fell between two members' saves of their
    last epoch: the unfinished members then finish in another group, whose
    size may round their last epochs' floats differently.
    """
    cfg.validate()
    workdir = Path(workdir)
    dataset = data.load(cfg.train.data).subset(cfg.train.train_subset)
    baseline = load_baseline(cfg.baseline, cfg) if cfg.baseline else None
    phases = plan(cfg, prunable_total(cfg.train))
    train.claim_workdir(workdir, cfg)  # refuses a workdir of a different study
    finals: dict[str, Final] = {}
    recorded = phases
    if baseline is not None:
        finals["baseline"] = baseline
        # Its training curve, when the checkpoint carries one, joins the results.
        recorded = [Phase("baseline", "", 0.0, 0, 0.0, 0.0, None), *phases]
        _copy_history(cfg.baseline, workdir / "baseline")

    by_name = {p.name: p for p in phases}

    def parent_of(phase: Phase) -> Final:
        if phase.parent not in finals:
            parent = by_name[phase.parent]
            finals[phase.parent] = load_final(workdir / parent.name, phase_config(cfg, parent))
        return finals[phase.parent]

    def spec(phase: Phase) -> train.RunSpec:
        start = masks = None
        if phase.parent is not None:
            parent = parent_of(phase)
            start = {"params": parent.params, "batch_stats": parent.batch_stats}
            masks = masks_lib.prune_global(
                parent.params, parent.masks, phase.amount, method=phase.method, key=pruning_key(cfg, phase)
            )
            got = masks_lib.sparsity(masks)
            if abs(got - phase.sparsity) > 1e-9:  # the plan's counts are the masks' counts
                raise AssertionError(f"{phase.name}: sparsity {got} but planned {phase.sparsity}")
        return train.RunSpec(
            phase_config(cfg, phase), workdir / phase.name, start, masks, {"phase": dataclasses.asdict(phase)}
        )

    epochs_total = sum(phase_config(cfg, p).epochs for p in phases)
    log(f"study: {len(phases)} phases, {epochs_total} epochs, in {workdir}")
    done = {p.name for p in phases if _finished(workdir / p.name, phase_config(cfg, p))}
    if baseline is not None:
        done.add("baseline")
    pending = [p for p in phases if p.name not in done]
    while pending:
        ready = [p for p in pending if p.parent is None or p.parent in done]
        epochs = phase_config(cfg, ready[0]).epochs
        group = [p for p in ready if phase_config(cfg, p).epochs == epochs][: cfg.parallel_runs]
        results = train.train_runs([spec(p) for p in group], dataset=dataset, on_epoch=_results_writer(workdir, recorded))
        for phase, result in zip(group, results):
            finals[phase.name] = Final(result.state.params, result.state.batch_stats, result.state.masks)
            done.add(phase.name)
            pending.remove(phase)
            log(
                f"[{len(done) - (baseline is not None)}/{len(phases)}] {phase.name}: "
                f"sparsity {100 * phase.sparsity:.2f}%, best test accuracy {100 * result.best_test_acc:.2f}%"
            )
        # Keep only the weights that pending phases will prune.
        needed = {p.parent for p in pending}
        for name in [n for n in finals if n not in needed]:
            del finals[name]
    rebuild_results(workdir, recorded)
    return workdir / "results.csv"


def _results_writer(workdir: Path, recorded: list[Phase]):
    """An on_epoch callback for one train_runs call that keeps results.csv current.

    Its first call rebuilds the file: by then every run of the group has
    settled its metrics (a resume drops rows whose checkpoint was lost). Later
    calls append one row each, rather than rereading every phase every epoch.
    """
    phase_of = {workdir / p.name: p for p in recorded}
    rebuilt = False

    def on_epoch(spec: train.RunSpec, row: dict[str, Any]) -> None:
        nonlocal rebuilt
        if rebuilt:
            append_result(workdir, phase_of[Path(spec.workdir)], row)
        else:
            rebuild_results(workdir, recorded)
            rebuilt = True

    return on_epoch


def _copy_history(path: str, dest: Path) -> None:
    folder, epoch = checkpoint.locate(path)
    history = checkpoint.read_meta(folder, epoch).get("history", [])
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
