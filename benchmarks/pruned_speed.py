"""What pruning buys in measured speed: dense, unstructured masks, 2:4 masks and channel-pruned
models of one network, at each target.

    python benchmarks/pruned_speed.py [--model cifar_vgg_11] [--width 64] [--targets 0.5 0.75]
                                      [--batches 1 256] [--train-batch 128] [--repeats 5] [--no-bcoo]

For each variant it prints the median wall time (after a warm-up call that compiles) of eval-mode
inference at each batch size, the training images/s of one jitted SGD step (masks applied to
the weights and the gradients, as jaxprune trains), the kept share of kernel weights and of
multiply-adds, and the speedup over dense. Unstructured and 2:4 masks keep the dense shapes, so
XLA runs them at dense speed; the channel-pruned model is a smaller network. With BCOO (default on)
it also times the unstructured model's inference with `jax.experimental.sparse` (the masked
kernels as BCOO arrays under `sparse.sparsify`), or says why it cannot.
Weights are random (kaiming); speed does not depend on their values.
"""

from __future__ import annotations

import argparse
import platform

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxprune
from jaxprune import models, structured
from jaxprune.models import cost as model_cost, init_variables
from timing import median_seconds


def device_line() -> str:
    d = jax.devices()[0]
    return f"{d.platform} ({d.device_kind}), {jax.device_count()} device(s), jax {jax.__version__}, {platform.processor() or platform.machine()}"


def infer_fn(module):
    return jax.jit(lambda v, x: module.apply(v, x, train=False))


def train_fn(module):
    tx = optax.sgd(0.1, momentum=0.9)

    @jax.jit
    def step(params, stats, opt, masks, x, y):
        def loss(p):
            logits, upd = module.apply({"params": jaxprune.apply_masks(p, masks), "batch_stats": stats}, x,
                                       train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), upd
        (l, upd), g = jax.value_and_grad(loss, has_aux=True)(params)
        g = jaxprune.apply_masks(g, masks)
        updates, opt = tx.update(g, opt, params)
        return jaxprune.apply_masks(optax.apply_updates(params, updates), masks), upd["batch_stats"], opt, l

    return tx, step


def measure(name, module, variables, masks, args, rng) -> dict:
    infer = infer_fn(module)
    v = {"params": jaxprune.apply_masks(variables["params"], masks), "batch_stats": variables["batch_stats"]}
    out = {}
    for b in args.batches:
        x = jnp.asarray(rng.normal(size=(b, 32, 32, 3)).astype(np.float32))
        out[f"infer_{b}"] = median_seconds(lambda: infer(v, x), args.repeats)
    tx, step = train_fn(module)
    x = jnp.asarray(rng.normal(size=(args.train_batch, 32, 32, 3)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 10, args.train_batch))
    opt = tx.init(v["params"])
    out["train_img_s"] = args.train_batch / median_seconds(
        lambda: step(v["params"], v["batch_stats"], opt, masks, x, y), args.repeats)
    c = model_cost.cost(module, v, masks)
    out["weights"] = sum(layer.weights_kept for layer in c.layers)
    out["flops_nz"] = c.flops_nz
    return out


def bcoo_infer(module, variables, masks, args, rng) -> dict:
    from jax.experimental import sparse

    v = {"params": jaxprune.apply_masks(variables["params"], masks), "batch_stats": variables["batch_stats"]}
    sp = jax.tree.map(lambda p, m: sparse.BCOO.fromdense(p) if np.ndim(m) else p, v["params"], masks)
    f = jax.jit(sparse.sparsify(lambda params, x: module.apply({"params": params, "batch_stats": v["batch_stats"]},
                                                                 x, train=False)))
    out = {}
    for b in args.batches:
        x = jnp.asarray(rng.normal(size=(b, 32, 32, 3)).astype(np.float32))
        out[f"infer_{b}"] = median_seconds(lambda: f(sp, x), args.repeats)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="cifar_vgg_11", help="a registered model with channel coupling (default cifar_vgg_11)")
    p.add_argument("--width", type=int, default=0, help="its width (0: the published one)")
    p.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.75],
                   help="fractions of the conv and dense weights removed (default 0.5 0.75)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 256], help="inference batch sizes (default 1 256)")
    p.add_argument("--train-batch", type=int, default=128, help="images per timed SGD step (default 128)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per figure; the median is printed (default 5)")
    p.add_argument("--score", default="l1", choices=structured.SCORES, help="channel score (default l1)")
    p.add_argument("--no-bcoo", action="store_true", help="skip jax.experimental.sparse inference")
    args = p.parse_args()

    spec = models.get(args.model)
    width = args.width or spec.width
    module = spec.build(10, width)
    variables = init_variables(module, 0)
    rng = np.random.default_rng(0)
    dense_masks = jaxprune.init_masks(variables["params"])
    print(f"device: {device_line()}")
    print(f"{args.model} at width {width}; medians of {args.repeats} after a warm-up; inference in eval mode, "
          f"training one SGD step at batch {args.train_batch}")
    rows = [("dense", 0.0, measure("dense", module, variables, dense_masks, args, rng))]
    print("measured: dense", flush=True)
    bcoo = {}
    for t in args.targets:
        masks = jaxprune.prune_global(variables["params"], dense_masks, t)
        rows.append((f"unstructured {t:.0%}", t, measure("u", module, variables, masks, args, rng)))
        if not args.no_bcoo and t == max(args.targets):
            try:
                bcoo = {"target": t, **bcoo_infer(module, variables, masks, args, rng)}
            except Exception as e:  # what users meet: say it in one line
                bcoo = {"target": t, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
        nm = jaxprune.prune(variables["params"], dense_masks, pattern="2:4") if t == 0.5 else None
        if nm is not None:
            rows.append(("2:4 masks", 0.5, measure("nm", module, variables, nm, args, rng)))
        pruned, reached = structured.prune_to_weights(args.model, variables, t, score=args.score, width=width)
        rows.append((f"channels {reached:.1%}", reached, measure(
            "c", pruned.model, pruned.variables, jaxprune.init_masks(pruned.variables["params"]), args, rng)))

    dense = rows[0][2]
    head = ["variant", "weights kept", "MACs kept", *[f"infer b={b} (ms)" for b in args.batches],
            *[f"speedup b={b}" for b in args.batches], "train img/s", "train speedup"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, _, r in rows:
        cells = [name, f"{r['weights'] / dense['weights']:.1%}", f"{r['flops_nz'] / dense['flops_nz']:.1%}",
                 *[f"{1e3 * r[f'infer_{b}']:.2f}" for b in args.batches],
                 *[f"{dense[f'infer_{b}'] / r[f'infer_{b}']:.2f}x" for b in args.batches],
                 f"{r['train_img_s']:,.0f}", f"{r['train_img_s'] / dense['train_img_s']:.2f}x"]
        print("| " + " | ".join(cells) + " |")
    if bcoo.get("error"):
        print(f"BCOO (jax.experimental.sparse) inference of the unstructured model at {bcoo['target']:.0%}: "
              f"not possible here: {bcoo['error']}")
    elif bcoo:
        print(f"BCOO (jax.experimental.sparse) inference of the unstructured model at {bcoo['target']:.0%}: " + ", ".join(
            f"b={b} {1e3 * bcoo[f'infer_{b}']:.2f} ms ({dense[f'infer_{b}'] / bcoo[f'infer_{b}']:.2f}x dense)"
            for b in args.batches))


if __name__ == "__main__":
    main()
