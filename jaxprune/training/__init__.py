"""One training run: its config (`config`); the train state, optimiser and schedule
(`state`), the pure jitted step, epoch and evaluation (`step`) and the compiled functions
a recipe shares, serving both (`train`); the pipelined epoch driver (`loop`) and one run
in it, with checkpoints and resume (`run`); Orbax checkpoints: a run's (`run_checkpoints`),
write errors and quiet hooks (`storage`), reading one back and serving both (`checkpoint`);
the run directory's lock, identity and metric logs (`rundir`), the device mesh (`devices`)
and evaluating a saved checkpoint (`evaluation`).

May import runtime, masks, models and data; nothing of study, report or the command line.
"""
