"""Where a command runs: the one-line user error (`errors`), signals (`interrupt`), the hosts
of a multi-process job (`hosts`) and deterministic fault injection for the tests (`faults`).

The bottom layer: it imports nothing else of jaxprune, and importing it imports no JAX.
"""
