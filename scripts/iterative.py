#!/usr/bin/env python
"""Iterative pruning only: `jaxprune study --schedules iterative` (see --help for every option)."""
import sys

from jaxprune.cli import main

if __name__ == "__main__":
    sys.exit(main(["study", "--schedules", "iterative", *sys.argv[1:]]))
