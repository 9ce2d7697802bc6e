"""The model registry and open_lth's CIFAR models, compared with open_lth's own torch code
(tests/open_lth_models.py): names, shapes and counts at full size (shapes only), eval
logits through the export at small width, and the initialisation's distributions."""

import json
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune
from jaxprune import export, models
from jaxprune.models import kernels
from jaxprune.masks import path_names
from jaxprune.models import count_params, init_variables


def full_shapes(name, classes=10, width=0):
    module = models.get(name).build(classes, width)
    return jax.eval_shape(lambda: init_variables(module, 0))


def torch_model(name, classes=10, width=0):
    torch = pytest.importorskip("torch")
    import open_lth_models as ref

    torch.manual_seed(0)
    depth = int(name.split("_")[2])
    if name.startswith("cifar_resnet"):
        return ref.CifarResNet.get_model_from_name(f"{name}_{width or 16}", ref.init_fn, classes)
    plan = [s if s == "M" else s * (width or 64) // 64 for s in ref.CifarVGG.PLANS[depth]]
    return ref.CifarVGG(plan, ref.init_fn, classes)


@pytest.mark.parametrize("name, classes, params, kernels_, prunable", [
    # Counted by open_lth's torch models (sum of numel over parameters(); kernels = conv
    # and Linear weights, open_lth's prunable layers).
    ("cifar_resnet_20", 10, 272_474, 22, 270_896),
    ("cifar_resnet_56", 10, 855_770, 58, 851_504),
    ("cifar_resnet_20", 100, 278_324, 22, 276_656),
    ("cifar_vgg_16", 10, 14_728_266, 14, 14_715_584),
    ("cifar_vgg_11", 100, 9_277_284, 9, 9_268_928),
])
def test_full_size_counts_equal_open_lth(name, classes, params, kernels_, prunable):
    shapes = full_shapes(name, classes)
    assert count_params(shapes["params"]) == params
    assert kernels.counts(kernels.Arch(name, models.get(name).width, classes))[:2] == (kernels_, prunable)
    reference = torch_model(name, classes)
    assert sum(p.numel() for p in reference.parameters()) == params
    weights = [m.weight for m in reference.modules() if type(m).__name__ in ("Conv2d", "Linear")]
    assert (len(weights), sum(w.numel() for w in weights)) == (kernels_, prunable)


@pytest.mark.parametrize("name", ["cifar_resnet_20", "cifar_resnet_32", "cifar_vgg_11", "cifar_vgg_16", "cifar_vgg_19"])
def test_exported_keys_and_shapes_are_open_lths_state_dict(name):
    shapes = full_shapes(name)
    sd = export.to_torch_state_dict(
        jax.tree.map(lambda s: np.zeros(s.shape, np.float32), shapes["params"]),
        jax.tree.map(lambda s: np.zeros(s.shape, np.float32), shapes["batch_stats"]), model=name)
    reference = torch_model(name).state_dict()
    assert list(sd) == list(reference) == export.torch_keys(name)
    for key, x in sd.items():
        assert x.shape == tuple(reference[key].shape), key


@pytest.mark.slow
@pytest.mark.parametrize("name, width", [("cifar_resnet_20", 4), ("cifar_vgg_11", 8)])
def test_torch_eval_logits_equal_after_export_and_a_train_step(name, width):
    torch = pytest.importorskip("torch")
    module = models.get(name).build(10, width)
    variables = init_variables(module, 3)
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
    # One train-mode pass updates the running statistics away from their defaults.
    _, updates = module.apply(variables, jnp.asarray(x), train=True, mutable=["batch_stats"])
    params, batch_stats = variables["params"], updates["batch_stats"]
    masks = jaxprune.prune_global(params, jaxprune.init_masks(params), 0.5)
    expected = np.asarray(module.apply({"params": jaxprune.apply_masks(params, masks), "batch_stats": batch_stats},
                                       jnp.asarray(x)))
    reference = torch_model(name, 10, width)
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in
                               export.to_torch_state_dict(params, batch_stats, masks, model=name).items()}, strict=True)
    reference.eval()
    with torch.no_grad():
        got = reference(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert np.ptp(expected, axis=1).min() > 1e-3
    back = export.from_torch_state_dict(reference.state_dict(), width, model=name)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves((jaxprune.apply_masks(params, masks), batch_stats))):
        np.testing.assert_array_equal(a, np.asarray(b))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cifar_resnet_20", "cifar_vgg_16"])
def test_initialisation_is_open_lths(name):
    """kaiming-normal weights (std sqrt(2 / fan_in), not truncated), BatchNorm weights U[0, 1)
    and biases 0, conv/fc biases U(+-1/sqrt(fan_in)): the same moments as open_lth's torch init."""
    pytest.importorskip("torch")
    params = init_variables(models.get(name).build(10), 0)["params"]
    reference = dict(torch_model(name).named_parameters())
    leaves = {export.torch_key("params", path_names(p), name): np.asarray(x)
              for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    assert set(leaves) == set(reference)
    checked = {"big kernels": 0, "bn": 0, "biases": 0}
    for key, x in leaves.items():
        theirs = reference[key].detach().numpy()
        module = key.rsplit(".", 1)[0]
        if x.ndim in (2, 4):  # kernels: N(0, 2 / fan_in)
            std = math.sqrt(2 / math.prod(x.shape[:-1]))
            if x.size >= 20_000:  # enough draws for a tight check
                checked["big kernels"] += 1
                assert abs(x.std() / std - 1) < 0.05 and abs(theirs.std() / std - 1) < 0.05, key
                assert abs(x.mean()) < 0.05 * std, key
                assert np.abs(x).max() > 3.5 * std, key  # untruncated: tails beyond 2 std
        elif module.split(".")[-1].startswith("bn") or module.endswith("shortcut.1"):
            checked["bn"] += 1
            if key.endswith("weight"):  # U[0, 1)
                assert 0 <= x.min() and x.max() < 1 and 0 <= theirs.min() and theirs.max() < 1, key
            else:
                assert not x.any() and not theirs.any(), key
        else:  # conv and fc biases: torch's default U(+-1/sqrt(fan_in))
            checked["biases"] += 1
            bound = 1 / math.sqrt(math.prod(leaves[f"{module}.weight"].shape[:-1]))
            assert np.abs(x).max() <= bound and np.abs(theirs).max() <= bound, key
    assert checked["big kernels"] >= 5 and checked["bn"] >= 20 and checked["biases"] >= 1
    all_bn = np.concatenate([x for k, x in leaves.items() if k.endswith("weight") and x.ndim == 1])
    assert abs(all_bn.mean() - 0.5) < 0.02  # uniform on [0, 1), thousands of draws


def test_registered_model_trains_counts_and_is_refused_twice():
    class Tiny(nn.Module):
        num_classes: int
        width: int

        @nn.compact
        def __call__(self, x, train=False):
            x = nn.Conv(self.width, (3, 3), name="conv")(x)
            return nn.Dense(self.num_classes, name="dense")(x.mean((1, 2)))

    spec = models.register("tiny_test_cnn", lambda classes, width, dtype: Tiny(classes, width), width=6)
    try:
        check_registered(spec, Tiny)
    finally:
        del models.registry.MODELS["tiny_test_cnn"]


def check_registered(spec, Tiny):
    assert models.get("tiny_test_cnn") is spec and "tiny_test_cnn" in models.names()
    with pytest.raises(models.ModelError, match="already registered"):
        models.register("tiny_test_cnn", lambda c, w, d: Tiny(c, w))
    with pytest.raises(models.ModelError, match="already registered"):
        models.register("cifar_resnet_20", lambda c, w, d: Tiny(c, w))
    # No batch_stats, no per-model code: the default filter finds its two kernels.
    assert kernels.counts(kernels.Arch("tiny_test_cnn", 6, 3)) == (2, 3 * 3 * 3 * 6 + 6 * 3, 162 + 6 + 18 + 3)
    variables = init_variables(spec.build(3), 0)
    sd = export.to_torch_state_dict(variables["params"], variables.get("batch_stats", {}), model="tiny_test_cnn")
    assert sorted(sd) == ["params/conv/bias", "params/conv/kernel", "params/dense/bias", "params/dense/kernel"]
    assert sd["params/conv/kernel"].shape == (3, 3, 3, 6)  # Flax layout kept


@pytest.mark.parametrize("bad, message", [
    ("cifar_resnet_21", "unknown model 'cifar_resnet_21'"),
    ("cifar_vgg_17", "unknown model 'cifar_vgg_17'"),
    ("resnet", "choose from resnet18, tiny, cifar_resnet_N"),
])
def test_unknown_names_are_refused_with_the_choices(bad, message):
    with pytest.raises(models.ModelError, match=message):
        models.get(bad)


SMALL = ["--preset", "smoke", "--data", "synthetic:256,64", "--methods", "magnitude", "--targets", "0.5",
         "--baseline-epochs", "1", "--no-progress"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cifar_vgg_16"])  # cifar_resnet_20's: tests/test_study_channels.py
def test_a_study_of_an_open_lth_model_runs_and_names_it(tmp_path, name, capsys):
    import csv

    from jaxprune import cli
    from jaxprune.study import driver as study

    w = tmp_path / "study"
    assert cli.main(["study", *SMALL, "--model", name, "--workdir", str(w)]) == 0
    rows = list(csv.DictReader(open(w / "results.csv")))
    assert len(rows) == 3 and {(r["model"], r["data"]) for r in rows} == {(name, "synthetic")}
    cfg = config_for(name)
    total = study.prunable_total(cfg)
    assert total == kernels.counts(kernels.Arch(name, 4, 10))[1]
    assert {float(r["sparsity"]) for r in rows} == {0.0, round(round(0.5 * total) / total, 6)}
    assert (w / "report" / "report.md").read_text().startswith(f"# Pruning study report: {name} on synthetic")
    assert cli.main(["evaluate", str(w / "oneshot-magnitude-0.50" / "round-01")]) == 0
    assert "sparsity 50.00%" in capsys.readouterr().out


def config_for(name):
    from jaxprune import config

    return config.TrainConfig(model=name, data="synthetic:256,64", width=4)


@pytest.mark.slow
def test_cifar100_trains_a_100_way_head_that_open_lths_torch_model_reproduces(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    import open_lth_models as ref

    from jaxprune import cli
    from jaxprune.data import sources as data

    ds = data.synthetic(250, 50, classes=100)
    folder = tmp_path / "c100" / "cifar-100-binary"
    folder.mkdir(parents=True)
    data.write_bin(folder / "train.bin", ds.train_images, ds.train_labels, data.BINARY["cifar100"])
    data.write_bin(folder / "test.bin", ds.test_images, ds.test_labels, data.BINARY["cifar100"])
    run = tmp_path / "run"
    assert cli.main(["train", "--preset", "smoke", "--model", "cifar_resnet_20", "--data",
                     f"cifar100-bin:{tmp_path / 'c100'}", "--epochs", "1", "--no-progress", "--workdir", str(run)]) == 0
    assert cli.main(["export", str(run), str(tmp_path / "out")]) == 0
    from safetensors.torch import load_file

    sd = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert tuple(sd["fc.weight"].shape) == (100, 16)  # width 4: 4 x 4 channels into 100 classes
    model = ref.CifarResNet.get_model_from_name("cifar_resnet_20_4", ref.init_fn, 100)
    model.load_state_dict(sd, strict=True)
    info = json.loads((tmp_path / "out" / "config.json").read_text())
    assert info["model"]["name"] == "cifar_resnet_20" and info["model"]["num_classes"] == 100
    model.eval()
    mean, std = np.asarray(info["model"]["mean"]), np.asarray(info["model"]["std"])
    x = (ds.test_images[:8] / 255.0 - mean) / std
    with torch.no_grad():
        logits = model(torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32))).numpy()
    capsys.readouterr()
    assert cli.main(["evaluate", str(run)]) == 0
    acc = float(re.search(r"test accuracy ([\d.]+)%", capsys.readouterr().out)[1]) / 100
    full = ((ds.test_images / 255.0 - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)
    with torch.no_grad():
        torch_acc = (model(torch.from_numpy(full)).numpy().argmax(1) == ds.test_labels).mean()
    assert logits.shape == (8, 100) and acc == pytest.approx(torch_acc, abs=1e-9)
