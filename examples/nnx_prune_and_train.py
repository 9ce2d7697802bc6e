"""Prune a Flax NNX model globally by magnitude, then train it with pruned weights held at 0."""

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import jaxprune

model = nnx.Sequential(nnx.Linear(16, 64, rngs=nnx.Rngs(0)), nnx.relu, nnx.Linear(64, 4, rngs=nnx.Rngs(1)))
params = nnx.state(model, nnx.Param)
masks = jaxprune.prune_global(params, jaxprune.init_masks(params), 0.5)  # half the kernel weights, by |w|
nnx.update(model, jaxprune.apply_masks(params, masks))
optimizer = nnx.Optimizer(model, optax.chain(optax.adamw(1e-2), jaxprune.keep_pruned(masks)), wrt=nnx.Param)


@nnx.jit
def train_step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(lambda m: optax.l2_loss(m(x), y).mean())(model)
    optimizer.update(model, grads)
    return loss


x, y = jax.random.normal(jax.random.key(0), (128, 16)), jax.random.normal(jax.random.key(1), (128, 4))
losses = [float(train_step(model, optimizer, x, y)) for _ in range(50)]
params = nnx.state(model, nnx.Param)
print(jaxprune.sparsity_report(masks))
print(f"sparsity {jaxprune.sparsity(masks):.4f}")
print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f}")
largest = jax.tree.leaves(jax.tree.map(lambda p, m: jnp.max(jnp.where(m, 0.0, jnp.abs(p))), params, masks))
print(f"largest |w| at a pruned position: {max(float(v) for v in largest)}")
