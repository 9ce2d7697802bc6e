"""`python -m jaxprune.cli`: the `jaxprune` command, as `python -m jaxprune` runs it.

Signal handling first, then the CLI: importing `jaxprune.cli` is light, and JAX comes
with the command's first call.
"""

import sys

from jaxprune.runtime import interrupt

if __name__ == "__main__":
    interrupt.at_startup()
    from jaxprune.cli import main

    sys.exit(main())
