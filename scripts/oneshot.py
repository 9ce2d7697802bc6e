#!/usr/bin/env python
"""One-shot pruning only: `jaxprune study --schedules oneshot` (see --help for every option)."""
import sys

from jaxprune.cli import main

if __name__ == "__main__":
    sys.exit(main(["study", "--schedules", "oneshot", *sys.argv[1:]]))
