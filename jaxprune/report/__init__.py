"""results.csv -> the report: tables and figures (pandas, scipy, matplotlib; `report`), paired
statistics over seeds (`paired`) and the comparisons built on them (`comparisons`), and the
views of the phases' masks (`phase_masks`, `masks`).

May import every layer below it (runtime, masks, models, data, training, study). The report's
names are served here too, on first use (`jaxprune.report.write_report`, `.read_results`, ...).
"""


def __getattr__(name: str):
    import importlib
    import pkgutil

    if name.startswith("__"):
        raise AttributeError(name)
    if name in {m.name for m in pkgutil.iter_modules(__path__)}:  # a submodule not imported yet
        return importlib.import_module(f"{__name__}.{name}")
    return getattr(importlib.import_module(f"{__name__}.report"), name)
