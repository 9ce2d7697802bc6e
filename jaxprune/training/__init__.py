"""One training run: its config (`config`), the train state and the jitted step, epoch and
evaluation (`train`), the pipelined epoch driver with checkpoints and resume (`loop`), Orbax
checkpoints (`checkpoint`), the run directory's lock, identity and metric logs (`rundir`), the
device mesh (`devices`) and evaluating a saved checkpoint (`evaluation`).

May import runtime, masks, models and data; nothing of study, report or the command line.
"""
