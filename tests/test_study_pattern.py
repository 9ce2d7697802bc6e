"""--pattern N:M in the study, and what the report explains from the phases' masks: the N:M
comparison, paired verdicts, per-layer profiles and mask overlap."""

import csv
import dataclasses

import jax
import numpy as np
import pandas as pd
import pytest

from jaxprune.training import checkpoint, train
from jaxprune import cli, config, masks
from jaxprune.models import kernels
from jaxprune.report import phase_masks
from jaxprune.study import driver as study


def _cfg(**kw):
    return dataclasses.replace(config.study_preset("smoke"), **{"pattern": "2:4", **kw})


def test_a_pattern_adds_its_phase_and_an_unstructured_twin_at_its_target():
    cfg = _cfg(methods=("magnitude",), targets=(0.75,), schedules=("oneshot",))
    total = study.prunable_total(cfg.train)
    names = {p.name: p for p in study.plan(cfg, total)}
    assert list(names) == ["baseline", "oneshot-magnitude-0.75/round-01", "oneshot-magnitude-0.50/round-01",
                           "oneshot-magnitude-2of4-0.50/round-01"]
    nm = names["oneshot-magnitude-2of4-0.50/round-01"]
    # Width 4: every kernel holds 2:4 along its input axis but the 3-channel stem (3x3x3x4 = 108 weights).
    assert total == 44_012 and nm.count == (total - 108) // 2 == kernels.pattern_count(
        kernels.Arch.of(cfg.train), (), "2:4")
    assert nm.sparsity == nm.count / total and nm.distribution == "2:4" and nm.target == 0.5
    assert names["oneshot-magnitude-0.50/round-01"].count == total // 2
    # With 0.5 among the targets the twin is that phase, planned once; 1:4 targets 75%.
    again = study.plan(_cfg(methods=("magnitude",), targets=(0.5,), schedules=("oneshot",)), total)
    assert [p.name for p in again] == ["baseline", "oneshot-magnitude-0.50/round-01", "oneshot-magnitude-2of4-0.50/round-01"]
    quarter = study.plan(_cfg(methods=("magnitude",), targets=(0.5,), schedules=("oneshot",), pattern="1:4"), total)
    assert quarter[-1].name == "oneshot-magnitude-1of4-0.75/round-01" and quarter[-1].count == (total - 108) * 3 // 4
    # Controls of an N:M phase are not planned: shuffling within a layer would break the pattern.
    ctl = study.plan(_cfg(methods=("magnitude",), targets=(0.5,), schedules=("oneshot",), retrain=("retrain", "shuffle")), total)
    assert [p.name for p in ctl if p.retrain == "shuffle"] == ["oneshot-magnitude-0.50-shuffle/round-01"]
    with pytest.raises(study.StudyError, match="--pattern needs a dense baseline"):
        study.plan(cfg, total, pruned=10)


@pytest.mark.parametrize("bad", ["4:2", "2:2", "two:four", "0:4"])
def test_a_bad_pattern_is_refused_in_one_line(tmp_path, capsys, bad):
    code = cli.main(["study", "--preset", "tiny", "--pattern", bad, "--workdir", str(tmp_path / "w")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--pattern: pattern" in err[0] and "use N:M with 0 < N < M" in err[0], err
    assert not (tmp_path / "w").exists()


def _packed(rows):
    """PhaseMasks from {layer: flat bool list}."""
    return phase_masks.PhaseMasks({k: np.packbits(np.array(v, bool)) for k, v in rows.items()},
                                  {k: len(v) for k, v in rows.items()})


def test_layer_profiles_and_overlaps_by_hand():
    a = _packed({"conv": [1, 1, 0, 0, 1, 0, 1, 0, 1, 1], "head": [1, 0, 0, 0]})
    b = _packed({"conv": [1, 0, 1, 0, 1, 0, 1, 0, 1, 1], "head": [0, 0, 0, 1]})
    c = _packed({"conv": [0, 0, 1, 1, 0, 1, 0, 1, 0, 0], "head": [0, 1, 1, 1]})  # a's complement
    k = lambda seed, sch: (seed, "retrain", "global", sch, "magnitude", 0.5, 1)  # noqa: E731
    found = {k(0, "oneshot"): a, k(0, "iterative"): b, k(1, "oneshot"): c, k(1, "iterative"): a}
    prof = phase_masks.layer_profile(found)
    assert prof[["layer", "size", "kept"]].values.tolist()[:2] == [["conv", 10, 6], ["head", 4, 1]]
    assert prof["sparsity"].tolist()[:2] == [0.4, 0.75]
    pairs = phase_masks.overlaps(found, {k(0, "oneshot"): 0.5, k(0, "iterative"): 0.5, k(1, "oneshot"): 0.5,
                                         k(1, "iterative"): 0.6})
    got = {(x["a"][0], x["a"][3], x["b"][0], x["b"][3]): x["jaccard"] for _, x in pairs.iterrows()}
    # a, b: 5 kept in both (conv 1,5,7,9,10) of 9 kept in either (conv 1,2,3,5,7,9,10; head 1,4);
    # b, c: 2 in both (conv 3, head 4) of 12 in either; a, c: complements. Seed 1's iterative is alone at 0.6.
    assert got == {(0, "oneshot", 0, "iterative"): 5 / 9, (0, "oneshot", 1, "oneshot"): 0.0,
                   (0, "iterative", 1, "oneshot"): 2 / 12}
    assert masks.overlap.jaccard(a.bits, a.bits) == 1.0


@pytest.mark.slow
def test_a_pattern_study_with_seeds_explains_itself(tmp_path):
    w = tmp_path / "study"
    args = ["study", "--preset", "tiny", "--data", "synthetic:256,64", "--methods", "magnitude", "--targets", "0.5",
            "0.75", "--baseline-epochs", "1", "--pattern", "2:4", "--seeds", "0", "1", "--no-progress",
            "--workdir", str(w)]
    assert cli.main(args) == 0
    rows = list(csv.DictReader(open(w / "results.csv")))
    total = 3_928  # tiny at width 8: conv1 216, conv2 1,152, fc 2,560
    nm_rows = [r for r in rows if r["distribution"] == "2:4"]
    assert len(nm_rows) == 2 and {r["seed"] for r in nm_rows} == {"0", "1"}
    assert all(float(r["sparsity"]) == round((total - 216) // 2 / total, 6) for r in nm_rows)

    # The N:M phase's masks hold the pattern, and its pruned weights stayed 0 through training.
    cfg = config.from_dict(config.StudyConfig, json_config(w))
    phase = next(p for p in study.recorded_phases(w) if p.distribution == "2:4" and p.seed == 1)
    model, _ = checkpoint.restore_model(w / phase.name / "checkpoints", 1,
                                        checkpoint.abstract_model(train.abstract_state(study.phase_config(cfg, phase))))
    checked = 0
    for (path, m), p in zip(jax.tree_util.tree_leaves_with_path(model["masks"]), jax.tree.leaves(model["params"])):
        m, p = np.asarray(m), np.asarray(p)
        if m.ndim == 0:
            continue
        if m.shape[-2] % 4:
            assert m.all(), path  # the stem stays dense
        else:
            groups = np.moveaxis(m, -2, -1).reshape(-1, 4).sum(-1)
            assert (groups == 2).all() and masks.nm.follows(m, 2, 4), path
            checked += 1
        assert (p[~m] == 0).all(), path
    assert checked == 2  # conv2 and fc; conv1 has 3 inputs

    report = w / "report"
    paired_md = (report / "table8_paired.md").read_text()
    for line in ("iterative − one-shot at 50%: ", "iterative − one-shot at 75%: ", "2:4 − unstructured at 50%: "):
        assert f"- {line}" in paired_md and paired_md.split(f"- {line}")[1].split("\n")[0].endswith("n=2"), paired_md
    assert "seeds for 0.2 pp" in paired_md
    assert "| magnitude | 2:4 | 50 | 47.25 |" in (report / "table9_pattern.md").read_text()

    # The per-layer profile from the saved masks: one row per result, seed and kernel.
    prof = pd.read_csv(report / "table10_layer_sparsity.csv")
    assert len(prof) == 2 * 5 * 3  # seeds x (one-shot 50, 75; iterative at 50, 75; 2:4) x kernels
    # Each layer's multiply-adds per image: its weights times their output positions (32x32, 16x16, 1).
    positions = prof["layer"].map({"conv1/kernel": 1024, "conv2/kernel": 256, "fc/kernel": 1})
    assert (prof["flops"] == prof["size"] * positions).all() and (prof["flops_nz"] == prof["kept"] * positions).all()
    stem = prof[(prof["layer"] == "conv1/kernel") & (prof["arm"] == "one-shot magnitude, 2:4")]
    assert (stem["sparsity"] == 0).all() and (stem["kept"] == 216).all()
    one = prof[(prof["arm"] == "one-shot magnitude, global") & (prof["for_target"] == 0.5)]
    assert one.groupby("seed")["kept"].sum().tolist() == [total // 2] * 2

    # Overlap: the shared chain's first round prunes 50% from the same baseline by the same
    # magnitudes as one-shot does, so within a seed their masks are identical.
    ov = pd.read_csv(report / "table11_overlap.csv")
    same = ov[(ov["target"] == 0.5) & (ov["seed_a"] == ov["seed_b"])
              & ({*ov["arm_a"], *ov["arm_b"]} >= {"one-shot magnitude, global", "iterative magnitude, global"})
              & (ov[["arm_a", "arm_b"]].apply(set, axis=1) == {"one-shot magnitude, global", "iterative magnitude, global"})]
    assert len(same) == 2 and (same["jaccard"] == 1.0).all()
    # Every value equals a direct count over the restored masks (one pair checked by hand).
    a, b = (full_masks(w, cfg, p) for p in pick(w, [("oneshot", "global", 0.5, 0), ("oneshot", "2:4", 0.5, 0)]))
    both, either = (a & b).sum(), (a | b).sum()
    row = ov[(ov["seed_a"] == 0) & (ov["seed_b"] == 0) & (ov[["arm_a", "arm_b"]].apply(set, axis=1)
                                                          == {"one-shot magnitude, global", "one-shot magnitude, 2:4"})]
    assert row["jaccard"].tolist() == [pytest.approx(both / either, abs=1e-6)]
    for name in ("layer_sparsity.png", "mask_overlap.png"):
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (report / "report.md").read_text()
    assert all(s in md for s in ("Table 8:", "Table 9:", "Table 10:", "Table 11:", "![layer_sparsity]", "![mask_overlap]"))


def json_config(w):
    import json

    return json.loads((w / "config.json").read_text())["config"]


def pick(w, wanted):
    ps = study.recorded_phases(w)
    return [next(p for p in ps if (p.schedule, p.distribution, p.target, p.seed) == x) for x in wanted]


def full_masks(w, cfg, phase):
    """Every prunable weight's kept flag, from a full restore of the phase's final model."""
    model, _ = checkpoint.restore_model(w / phase.name / "checkpoints", 1,
                                        checkpoint.abstract_model(train.abstract_state(study.phase_config(cfg, phase))))
    return np.concatenate([np.asarray(m).ravel() for m in jax.tree.leaves(model["masks"]) if np.ndim(m)])
