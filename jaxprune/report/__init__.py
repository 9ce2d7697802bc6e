"""results.csv -> the report (pandas, scipy, matplotlib): results.csv read and reduced across
seeds (`results`), what the tables and figures show of it (`layout`), Tables 1-7
(`accuracy_tables`) and the figures (`accuracy_figures`), written and gathered into report.md
(`report`); paired statistics over seeds (`paired`) and the comparisons built on them
(`comparisons`), and the views of the phases' masks (`phase_masks`, `masks`).

May import every layer below it (runtime, masks, models, data, training, study). The report's
names are served here too, on first use (`jaxprune.report.write_report`, `.read_results`, ...).
"""

# Where the report's names are looked up, in turn: the lightest first (results needs no matplotlib).
_PARTS = ("results", "layout", "accuracy_tables", "accuracy_figures", "report")


def __getattr__(name: str):
    import importlib
    import pkgutil

    if name.startswith("__"):
        raise AttributeError(name)
    if name in {m.name for m in pkgutil.iter_modules(__path__)}:  # a submodule not imported yet
        return importlib.import_module(f"{__name__}.{name}")
    for part in _PARTS:
        module = importlib.import_module(f"{__name__}.{part}")
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
