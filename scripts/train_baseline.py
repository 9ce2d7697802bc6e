#!/usr/bin/env python
"""Train the baseline ResNet18: the same as `jaxprune train` (see --help)."""
import sys

from jaxprune.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
