"""The pruning study: its config and presets (`config`), the table of schedules and retraining
modes (`modes`), the plan of phases (`planning`), what a study directory records of them
(`results`: results.csv, its phases, the diverged ones), and the resumable driver that
trains them (`driver`, which serves the names of `planning` and `results` too).

May import runtime, masks, models, data and training; nothing of report or the command line.
The driver's names are served here too, on first use (`jaxprune.study.plan`, `.Phase`, ...),
so importing `jaxprune.study.modes` stays light.
"""


def __getattr__(name: str):
    import importlib
    import pkgutil

    if name.startswith("__"):
        raise AttributeError(name)
    if name in {m.name for m in pkgutil.iter_modules(__path__)}:  # a submodule not imported yet
        return importlib.import_module(f"{__name__}.{name}")
    return getattr(importlib.import_module(f"{__name__}.driver"), name)
