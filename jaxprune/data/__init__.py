"""Data sets: the `--data` registry and its sources (`sources`: CIFAR-10/100 binary, TFDS,
synthetic, your own arrays -> uint8 arrays; augmentation and normalisation on the device) and
`jaxprune data`'s download with checksums (`download`). `sources` serves the names of the
modules it builds on: `dataset` (the `Dataset` of host arrays, `DataError`) and `cifar` (the
CIFAR-10/100 binary layouts and their files).

May import runtime only. Every name of `sources` is served here too
(`jaxprune.data.register_source`, `jaxprune.data.Dataset`, ...).
"""

from jaxprune.data.sources import *  # noqa: F401,F403  (the registry's public names)
