"""The `jaxprune` command (and `python -m jaxprune`): signal handling first, then the CLI.

Importing the CLI brings JAX (seconds); a Ctrl-C meanwhile must be one line,
not a traceback or a signal swallowed inside JAX's import-time callbacks.
"""

import sys


def main(argv=None) -> int:
    from jaxprune.runtime import interrupt

    interrupt.at_startup()
    from jaxprune import cli

    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
