"""--structure channel in a study: phases that cut whole channels, trained, reported beside
unstructured pruning at equal parameters and equal multiply-adds, and exported as a smaller
PyTorch twin."""

import csv
import json
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune import cli, config, export
from jaxprune.models import kernels
from jaxprune.study import planning
from jaxprune.training import train

sys.path.insert(0, str(Path(__file__).parent))  # open_lth_models

DATA = ["--data", "synthetic:256,64", "--baseline-epochs", "1", "--no-progress"]


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("args, words", [
    (["--model", "tiny"], "channel pruning does not know how 'tiny'"),
    (["--model", "cifar_vgg_11", "--pattern", "2:4"], "--structure channel and --pattern: give one of them"),
    (["--model", "cifar_vgg_11", "--retrain", "weight-rewind"], "takes --retrain retrain or finetune or lr-rewind"),
    (["--model", "cifar_vgg_11", "--methods", "lamp"], "takes --methods magnitude or random, not lamp"),
    (["--model", "cifar_vgg_11", "--schedules", "gradual"], "takes --schedules oneshot or iterative, not gradual"),
])
def test_what_channel_pruning_cannot_do_is_one_line(tmp_path, capsys, args, words):
    code = cli.main(["study", "--preset", "tiny", "--structure", "channel", *args, "--workdir", str(tmp_path / "w")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and words in err[0], err
    assert not (tmp_path / "w").exists()


def test_channel_phases_are_planned_at_what_whole_channels_reach():
    cfg = config.study_preset("tiny", structure=("unstructured", "channel"), targets=(0.5, 0.75),
                              methods=("magnitude",), train={"model": "cifar_vgg_11", "width": 8})
    cfg.validate()
    total = planning.prunable_total(cfg.train)
    phases = {p.name: p for p in planning.plan(cfg, total)}
    assert "oneshot-magnitude-0.50/round-01" in phases and "oneshot-magnitude-channel-0.50/round-01" in phases
    for name, p in phases.items():
        if p.distribution != "channel":
            continue
        pcfg = planning.phase_config(cfg, p)
        kept = kernels.counts(kernels.Arch.of(pcfg), ())[1]
        assert p.sparsity == 1 - kept / total  # exact, from the smaller model's shapes
        assert abs(p.sparsity - p.target if p.schedule == "oneshot" else 0) < 0.01
        parent = phases.get(p.parent)
        assert p.count == round(p.sparsity * total) - round((parent.sparsity if parent else 0) * total)
    # Width 8: half the channels of every layer leave 25% of most kernels: 74.85% removed.
    assert phases["oneshot-magnitude-channel-0.75/round-01"].sparsity == pytest.approx(0.748522, abs=1e-6)


def test_equal_macs_interpolates_the_unstructured_arm_in_log_speedup_per_seed():
    import pandas as pd

    from jaxprune.report import comparisons

    u = pd.DataFrame({"seed": [0, 0, 1, 1], "speedup": [1.5, 3.0, 1.5, 3.0], "max_test": [0.9, 0.6, 0.8, 0.5]})
    c = pd.DataFrame({"seed": [0, 1, 2], "speedup": [np.sqrt(4.5), 4.0, 2.0], "max_test": [0.7, 0.7, 0.7]})
    got = comparisons._at_equal_macs(u, c)
    # seed 0: halfway in log speedup between 1.5x and 3x -> 0.75; seed 1: 4x is beyond its range;
    # seed 2: no unstructured result.
    assert got["seed"].tolist() == [0] and got["max_test"].tolist() == pytest.approx([0.75])


@pytest.mark.slow
def test_a_vgg_channel_study_runs_reports_and_exports_a_twin_torch_loads_strictly(tmp_path):
    torch = pytest.importorskip("torch")
    import open_lth_models as ref

    w = tmp_path / "study"
    args = ["study", "--preset", "tiny", "--model", "cifar_vgg_11", "--width", "8", "--structure", "unstructured",
            "channel", "--targets", "0.5", "0.75", "--methods", "magnitude", "--schedules", "oneshot", "--seeds", "0", "1",
            *DATA,
            "--workdir", str(w)]
    assert cli.main(args) == 0
    got = rows(w / "results.csv")
    channel = [r for r in got if r["structure"] == "channel"]
    assert {r["distribution"] for r in channel} == {"channel"} and len(channel) == 2 * 2  # seeds x phases
    for r in channel:  # a smaller network keeps all its weights: params_nz is its size
        p = next(p for p in planning.plan(config.from_dict(config.StudyConfig, json.loads(
            (w / "config.json").read_text())["config"]), 144_856) if p.name.endswith(
            f"{r['schedule']}-magnitude-channel-{float(r['target']):.2f}/round-{int(r['round']):02d}"))
        assert float(r["sparsity"]) == round(p.sparsity, 6)
        assert float(r["compression"]) > 1.9 and float(r["speedup"]) > 1.5
    paired = (w / "report" / "table8_paired.md").read_text()
    for line in ("- channel − unstructured, one-shot at 50%: ", "- channel − unstructured, one-shot at 75%: "):
        assert line in paired and paired.split(line)[1].split("\n")[0].endswith("n=2"), paired
    cost = (w / "report" / "table12_cost.md").read_text()
    assert "| 75 | one-shot | magnitude, channel |" in cost and "| 75 | one-shot | magnitude, unstructured |" in cost

    # The smaller network exported: open_lth's torch VGG built with its channel counts loads it strictly.
    phase = w / "seed-1" / "oneshot-magnitude-channel-0.75" / "round-01"
    out = tmp_path / "export"
    assert cli.main(["export", str(phase), str(out)]) == 0
    info = json.loads((out / "config.json").read_text())["model"]
    assert info["channels"] == [4, 8, 16, 16, 32, 32, 32, 32]
    assert info["channel_groups"]["layers.0.conv"] == 4 and info["channel_groups"]["layers.11.conv"] == 32
    counts = iter(info["channels"])
    twin = ref.CifarVGG([s if s == "M" else next(counts) for s in ref.CifarVGG.PLANS[11]], ref.init_fn, 10)
    from safetensors.numpy import load_file
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in load_file(out / "model.safetensors").items()}, strict=True)
    twin.eval()
    params, batch_stats, _, cfg, _ = export.load_for_export(phase)
    module = train.build_model(config.from_dict(config.TrainConfig, cfg))
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
    expected = np.asarray(module.apply({"params": params, "batch_stats": batch_stats}, jnp.asarray(x)))
    with torch.no_grad():
        theirs = twin(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
    np.testing.assert_allclose(theirs, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_a_cifar_resnet_channel_study_runs_end_to_end_and_resumes(tmp_path, capsys):
    """Also a study of open_lth's cifar_resnet_20 (unstructured beside channel), named as such."""
    w = tmp_path / "study"
    args = ["study", "--preset", "tiny", "--model", "cifar_resnet_20", "--width", "4", "--structure", "unstructured",
            "channel", "--targets", "0.5", "--schedules", "oneshot", "iterative", "--methods", "magnitude", "random",
            "--channel-score", "bn-scale", *DATA, "--workdir", str(w)]
    assert cli.main(args) == 0
    got = rows(w / "results.csv")
    assert {r["structure"] for r in got} == {"", "unstructured", "channel"} and len(got) == 1 + 2 * 2 * 2
    assert {(r["model"], r["data"]) for r in got} == {("cifar_resnet_20", "synthetic")}
    total = planning.prunable_total(config.TrainConfig(model="cifar_resnet_20", width=4))
    assert total == kernels.counts(kernels.Arch("cifar_resnet_20", 4, 10))[1]
    assert {float(r["sparsity"]) for r in got if r["structure"] != "channel"} == {0.0, round(round(0.5 * total) / total, 6)}
    assert (w / "report" / "report.md").read_text().startswith("# Pruning study report: cifar_resnet_20 on synthetic")
    assert cli.main(["evaluate", str(w / "oneshot-magnitude-0.50" / "round-01")]) == 0
    assert "sparsity 50.00%" in capsys.readouterr().out
    assert cli.main(["evaluate", str(w / "iterative-random-channel-0.50" / "round-01")]) == 0
    capsys.readouterr()
    assert cli.main(args) == 0  # finished: nothing trains again
    assert "0 of 9 epochs to train" in capsys.readouterr().out
