"""Export to kuangliu's PyTorch ResNet18: layouts, masks, round trips, checkpoints, OUT_DIR, CLI."""

import json

import jax
import numpy as np
import pytest
import safetensors.numpy

import jaxprune
from jaxprune.training import checkpoint, train
from jaxprune import cli, config as config_lib, export
from jaxprune.data import sources as data
from jaxprune.models import ResNet18, init_variables

WIDTH = 4


def randomized(variables, seed):
    """`variables` with BatchNorm scale, bias, running mean and variance drawn away from
    their defaults (1, 0, 0, 1), so that a BatchNorm mapped wrongly shows in the logits."""
    rng = np.random.default_rng(seed)

    def draw(path, x):
        name = jaxprune.path_str(path).rsplit("/", 1)[-1]
        draws = {"scale": lambda s: rng.uniform(0.5, 1.5, s), "mean": lambda s: rng.normal(0, 0.3, s),
                 "var": lambda s: rng.uniform(0.5, 2.0, s)}
        if name == "bias" and x.ndim == 1:
            return rng.normal(0, 0.2, x.shape).astype(np.float32)
        return draws[name](x.shape).astype(np.float32) if name in draws else np.asarray(x)

    return jax.tree_util.tree_map_with_path(draw, jax.device_get(variables))


@pytest.fixture(scope="module")
def pruned():
    """(params, batch_stats, masks): width-4 ResNet18, random BatchNorm, 60% pruned globally.
    The params are *not* masked, so the export must apply the masks itself."""
    v = randomized(init_variables(ResNet18(width=WIDTH), 0), 1)
    masks = jaxprune.prune_global(v["params"], jaxprune.init_masks(v["params"]), 0.6)
    return v["params"], v["batch_stats"], jax.device_get(masks)


def images(n=8, seed=0):
    """Normalised NHWC float32 inputs, as jaxprune's evaluation feeds them."""
    raw = np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    return np.asarray(data.normalize(raw))


def jax_logits(params, batch_stats, masks, x):
    params = jaxprune.apply_masks(params, masks)
    return np.asarray(ResNet18(width=WIDTH).apply({"params": params, "batch_stats": batch_stats}, x, train=False))


def torch_logits(state_dict, x, width=WIDTH):
    """Eval-mode logits of tests/torch_resnet.ResNet18 loaded strictly from a numpy state_dict."""
    torch = pytest.importorskip("torch")
    from torch_resnet import ResNet18 as TorchResNet18

    model = TorchResNet18(width=width)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=True)
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ---------------------------------------------------------------- state dicts


def test_state_dict_has_kuangliu_keys_shapes_and_dtypes(pruned):
    torch = pytest.importorskip("torch")
    from torch_resnet import ResNet18 as TorchResNet18

    sd = export.to_torch_state_dict(*pruned, num_batches_tracked=7)
    reference = TorchResNet18(width=WIDTH).state_dict()
    assert list(sd) == list(reference) == export.torch_keys()
    for key, x in sd.items():
        assert x.shape == tuple(reference[key].shape), key
        assert x.dtype == (np.int64 if key.endswith("num_batches_tracked") else np.float32), key
        assert x.flags.c_contiguous and x.flags.writeable, key
    assert int(sd["layer2.0.shortcut.1.num_batches_tracked"]) == 7
    assert "layer1.0.shortcut.0.weight" not in sd  # layer1 keeps its shape: identity shortcut
    params, batch_stats, masks = pruned
    kernel = np.where(masks["layer2_0"]["conv1"]["kernel"], params["layer2_0"]["conv1"]["kernel"], 0)
    np.testing.assert_array_equal(sd["layer2.0.conv1.weight"], kernel.transpose(3, 2, 0, 1))  # HWIO -> OIHW
    np.testing.assert_array_equal(sd["linear.weight"], np.where(masks["head"]["kernel"], params["head"]["kernel"], 0).T)
    np.testing.assert_array_equal(sd["layer3.0.shortcut.1.running_var"], batch_stats["layer3_0"]["shortcut_bn"]["var"])
    np.testing.assert_array_equal(sd["bn1.weight"], params["stem_bn"]["scale"])
    assert torch.tensor(0).dtype == torch.from_numpy(sd["bn1.num_batches_tracked"]).dtype  # int64, as torch


def test_torch_eval_logits_equal_jax_eval_logits(pruned):
    pytest.importorskip("torch")
    x = images()
    sd = export.to_torch_state_dict(*pruned)
    expected = jax_logits(*pruned, x)
    got = torch_logits(sd, x)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert np.ptp(expected, axis=1).min() > 1e-2  # logits that tell classes apart
    # The running statistics are really used: default ones give other logits.
    reset = {**sd, **{k: np.zeros_like(v) for k, v in sd.items() if k.endswith("running_mean")}}
    assert np.abs(torch_logits(reset, x) - expected).max() > 1e-2


def test_pruned_weights_are_exact_zeros_and_masks_match(pruned):
    params, batch_stats, masks = pruned
    sd = export.to_torch_state_dict(params, batch_stats, masks)
    msd = export.masks_state_dict(masks)
    conv_and_linear = [k for k in export.torch_keys() if k.endswith("weight") and sd[k].ndim in (2, 4)]
    assert sorted(msd) == sorted(conv_and_linear) and len(msd) == 21
    pruned_total = 0
    for key, m in msd.items():
        assert m.dtype == np.bool_ and m.shape == sd[key].shape, key
        assert np.all(sd[key][~m] == 0) and not np.signbit(sd[key][~m]).any(), key  # +0.0
        assert np.all(sd[key][m] != 0), key  # kept weights survive (none is 0 at init)
        pruned_total += int((~m).sum())
    assert pruned_total == round(0.6 * sum(m.size for m in msd.values()))
    # Without masks nothing is zeroed: the params given are not pre-masked.
    unmasked = export.to_torch_state_dict(params, batch_stats)
    assert np.all(unmasked["conv1.weight"] != 0) and np.any(~msd["conv1.weight"])


def test_round_trip_through_torch_layout_is_exact(pruned):
    params, batch_stats, _ = pruned
    back_params, back_stats = export.from_torch_state_dict(export.to_torch_state_dict(params, batch_stats), WIDTH)
    assert_trees_equal(back_params, jax.device_get(params))
    assert_trees_equal(back_stats, jax.device_get(batch_stats))


def test_torch_state_dict_round_trip_is_exact():
    torch = pytest.importorskip("torch")
    from torch_resnet import ResNet18 as TorchResNet18

    torch.manual_seed(0)
    model = TorchResNet18(width=WIDTH)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
    sd = model.state_dict()
    params, batch_stats = export.from_torch_state_dict(sd, WIDTH)  # torch tensors in
    again = export.to_torch_state_dict(params, batch_stats)
    for key, x in sd.items():
        if not key.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(again[key], x.numpy(), err_msg=key)
    x = images(4, 1)
    np.testing.assert_allclose(
        jax_logits(params, batch_stats, jaxprune.init_masks(params), x),
        model.eval()(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).detach().numpy(),
        rtol=1e-4, atol=1e-4,
    )


def test_from_torch_state_dict_is_strict(pruned):
    sd = export.to_torch_state_dict(*pruned)
    with pytest.raises(export.ExportError, match="1 missing keys.*layer4.1.bn2.running_var"):
        export.from_torch_state_dict({k: v for k, v in sd.items() if k != "layer4.1.bn2.running_var"}, WIDTH)
    with pytest.raises(export.ExportError, match="1 unexpected.*layer1.0.shortcut.0.weight"):
        export.from_torch_state_dict({**sd, "layer1.0.shortcut.0.weight": sd["conv1.weight"]}, WIDTH)
    with pytest.raises(export.ExportError, match=r"linear.weight has shape \(10, 32\), which a width-8 resnet18 does not"):
        export.from_torch_state_dict(sd, 8)
    with pytest.raises(export.ExportError, match="'extra/kernel' is not part of"):
        export.to_torch_state_dict({**pruned[0], "extra": {"kernel": np.ones((2, 2))}}, pruned[1])


# ---------------------------------------------------------------- checkpoints and OUT_DIR


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, pruned):
    """A run with two checkpoints written by RunCheckpoints: epoch 1 is the best (test_acc 0.9,
    30% pruned), epoch 2 the latest (test_acc 0.5, `pruned`: 60%). Returns (dir, {epoch: state})."""
    run = tmp_path_factory.mktemp("run")
    cfg = config_lib.TrainConfig(**{**config_lib.TRAIN_PRESETS["smoke"], "width": WIDTH, "epochs": 2})
    tx = train.make_optimizer(cfg, 1)
    first = randomized(init_variables(ResNet18(width=WIDTH), 2), 3)
    states = {
        1: train.create_train_state(first, tx, 0, jaxprune.prune_global(first["params"], jaxprune.init_masks(first["params"]), 0.3)),
        2: train.create_train_state({"params": pruned[0], "batch_stats": pruned[1]}, tx, 0, pruned[2]),
    }
    history = []
    with checkpoint.RunCheckpoints(run / "checkpoints") as ckpts:
        for epoch, acc in ((1, 0.9), (2, 0.5)):
            history.append({"epoch": epoch, "step": 32 * epoch, "test_acc": acc, "test_loss": 1.0})
            ckpts.save(epoch, states[epoch], {"metrics": history[-1], "history": list(history),
                                              "config": config_lib.to_dict(cfg), "phase": {"round": epoch},
                                              "jaxprune_version": jaxprune.__version__})
    return run, jax.device_get(states)


@pytest.mark.parametrize(
    "sub, which, epoch, sparsity",
    [("", "best", 1, 0.3), ("", "latest", 2, 0.6), ("checkpoints/1", "latest", 1, 0.3)],  # an epoch folder wins
)
def test_export_writes_the_chosen_epoch(run_dir, tmp_path, sub, which, epoch, sparsity):
    run, states = run_dir
    info = export.export(run / sub, tmp_path / "out", which=which)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(export.FILES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary left behind
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "out").iterdir()}
    assert set(modes.values()) == {0o666 & ~export._umask()}, modes  # not safetensors' own 0600
    state = states[epoch]
    model = safetensors.numpy.load_file(str(tmp_path / "out" / "model.safetensors"))
    expected = export.to_torch_state_dict(state.params, state.batch_stats, state.masks, num_batches_tracked=32 * epoch)
    assert list(expected) == export.torch_keys()
    for key, x in expected.items():
        assert model[key].dtype == x.dtype
        np.testing.assert_array_equal(model[key], x, err_msg=key)
    masks = safetensors.numpy.load_file(str(tmp_path / "out" / "masks.safetensors"))
    for key, m in export.masks_state_dict(state.masks).items():
        np.testing.assert_array_equal(masks[key], m, err_msg=key)
        assert masks[key].dtype == np.bool_ and np.all(model[key][~m] == 0)

    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved == json.loads(json.dumps(info))
    assert saved["format"] == "jaxprune-export" and saved["source"]["epoch"] == epoch
    assert saved["source"]["which"] == which and saved["num_batches_tracked"] == 32 * epoch
    assert saved["metrics"]["test_acc"] == {1: 0.9, 2: 0.5}[epoch]
    assert saved["config"]["width"] == WIDTH and saved["model"]["width"] == WIDTH
    assert saved["run"] == {"phase": {"round": epoch}}
    report = jaxprune.sparsity_report(state.masks)
    assert saved["sparsity"]["global"] == pytest.approx(report.total.sparsity)
    assert saved["sparsity"]["global"] == pytest.approx(sparsity, abs=1e-4)
    layers = saved["sparsity"]["layers"]
    assert len(layers) == 21
    conv = layers["layer2.0.shortcut.0.weight"]
    row = next(r for r in report.rows if r.path == "layer2_0/shortcut_conv/kernel")
    assert conv == {"path": row.path, "shape": [8, 4, 1, 1], "kept": row.kept, "total": 32, "sparsity": row.sparsity}
    for key, m in masks.items():
        assert layers[key]["kept"] == int(m.sum()) and layers[key]["total"] == m.size, key


def test_out_dir_policy(run_dir, tmp_path):
    run, _ = run_dir
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(export.ExportError, match="not empty and holds no previous export"):
        export.export(run, foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    for target in (tmp_path / "file", tmp_path / "file" / "below"):
        with pytest.raises(export.ExportError, match="is a file"):
            export.export(run, target)
    # An empty directory and a previous export are (re)written; new parents are made.
    (tmp_path / "empty").mkdir()
    assert export.export(run, tmp_path / "empty")["source"]["epoch"] == 2  # latest by default, as evaluate
    assert export.export(run, tmp_path / "empty", which="best")["source"]["epoch"] == 1
    assert json.loads((tmp_path / "empty" / "config.json").read_text())["source"]["epoch"] == 1  # the last written
    assert export.export(run, tmp_path / "new" / "deeper")["source"]["epoch"] == 2
    # A previous export with a user's file added is no longer only an export.
    (tmp_path / "empty" / "README").write_text("mine")
    with pytest.raises(export.ExportError, match="not empty"):
        export.export(run, tmp_path / "empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file", "foreign", "new"]


def test_a_failed_write_leaves_out_dir_as_it_was(run_dir, tmp_path, monkeypatch):
    run, _ = run_dir
    export.export(run, tmp_path / "prev", which="latest")
    before = {p.name: p.read_bytes() for p in (tmp_path / "prev").iterdir()}
    real_save = safetensors.numpy.save_file
    calls = []

    def fail_second(*args, **kwargs):  # the model file is written, the masks file is not
        calls.append(args[1])
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(safetensors.numpy, "save_file", fail_second)
    for out in (tmp_path / "prev", tmp_path / "fresh"):
        calls.clear()
        with pytest.raises(export.ExportError, match="cannot write .*: No space left on device"):
            export.export(run, out)
        assert len(calls) == 2
    assert {p.name: p.read_bytes() for p in (tmp_path / "prev").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prev"]


# ---------------------------------------------------------------- command line


@pytest.mark.slow
def test_cli_exports_a_trained_run_that_torch_reproduces(tmp_path, capsys):
    pytest.importorskip("torch")
    from safetensors.torch import load_file

    run = tmp_path / "run"
    assert cli.main(["train", "--preset", "smoke", "--epochs", "1", "--width", str(WIDTH),
                     "--workdir", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    assert cli.main(["export", str(run), str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'out'}: epoch 1 (latest) of {run}, global sparsity 0.00%, test accuracy" in out

    params, batch_stats, masks, cfg, meta = export.load_for_export(run, "latest")
    assert cfg["width"] == WIDTH and meta["epoch"] == 1
    stats = jax.tree.leaves(batch_stats)
    assert any(np.abs(s).max() > 1e-3 for s in stats[::2]) and any(np.abs(s - 1).max() > 1e-3 for s in stats[1::2])
    model = {k: v.numpy() for k, v in load_file(str(tmp_path / "out" / "model.safetensors")).items()}
    masks_file = load_file(str(tmp_path / "out" / "masks.safetensors"))
    assert all(str(m.dtype) == "torch.bool" and bool(m.all()) for m in masks_file.values())
    steps = json.loads((tmp_path / "out" / "config.json").read_text())["num_batches_tracked"]
    assert int(model["bn1.num_batches_tracked"]) == steps == meta["metrics"]["step"] > 0
    x = images()
    np.testing.assert_allclose(torch_logits(model, x), jax_logits(params, batch_stats, masks, x), rtol=1e-4, atol=1e-4)


def test_export_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as exit:
        cli.build_parser().parse_args(["export", "--help"])
    assert exit.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere
    for words in ("RUN_OR_PHASE_DIR", "OUT_DIR", "--which", "best", "latest", "default: latest", "strict=True"):
        assert words in out


@pytest.mark.parametrize(
    "args, words",
    [
        (["{tmp}/missing", "{tmp}/out"], "does not exist"),
        (["{tmp}/empty", "{tmp}/out"], "not a jaxprune checkpoint"),
        (["{run}", "{tmp}/foreign"], "holds no previous export"),
        (["{run}", "{tmp}/out", "--which", "worst"], "invalid choice: 'worst'"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(run_dir, tmp_path, capsys, args, words):
    (tmp_path / "empty").mkdir()
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    args = [a.replace("{tmp}", str(tmp_path)).replace("{run}", str(run_dir[0])) for a in args]
    try:
        code = cli.main(["export", *args])
    except SystemExit as e:  # argparse's errors exit from parse_args
        code = e.code
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "foreign"]
    assert [p.name for p in (tmp_path / "foreign").iterdir()] == ["notes.txt"]
