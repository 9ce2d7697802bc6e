"""Command line: argument parsing -> config -> one call into the library.

    jaxprune train    [--preset NAME] [--workdir DIR] [options]   train a baseline
    jaxprune evaluate CHECKPOINT [--data SPEC] [--best]           test accuracy + sparsity
    jaxprune study    [--preset NAME] [--workdir DIR] [options]   the whole pruning study
    jaxprune report   WORKDIR                                     figures and tables
    jaxprune export   RUN_OR_PHASE_DIR OUT_DIR [--which best]     PyTorch safetensors
    jaxprune data     cifar10|cifar100 [DIR] [--from FILE]        download CIFAR-10/100 for --data

Every config field is an option, with its documentation as help. A user's
mistake ends in one line on stderr and exit status 2, with nothing written.

Here: `main` (and the process around a command: joining and leaving a multi-process
job, the compilation cache, deterministic kernels). The parser is `parser`'s, the
commands `commands`'; their names are served here too, on first use (`cli.build_parser`,
`cli.COMMANDS`, ...), so importing `jaxprune.cli` stays light: `python -m jaxprune.cli`
installs its signal handlers before JAX is imported.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from jaxprune.runtime import interrupt
from jaxprune.runtime.errors import UserError


def _join_job(args: argparse.Namespace) -> None:
    """jax.distributed.initialize for --distributed (before anything uses a device)."""
    from jaxprune.cli.parser import UsageError

    given = [f for f in ("coordinator_address", "num_processes", "process_id")
             if getattr(args, f, None) not in (None, "", 0, -1)]
    if not getattr(args, "distributed", False):
        if given:
            raise UsageError(f"--{given[0].replace('_', '-')} needs --distributed")
        return
    if args.num_processes < 0:
        raise UsageError(f"--num-processes must be >= 1 (0 = from the environment), got {args.num_processes}")
    if args.num_processes and not -1 <= args.process_id < args.num_processes:
        raise UsageError(f"--process-id must be in 0..{args.num_processes - 1}, got {args.process_id}")
    from jaxprune.runtime import hosts

    try:
        hosts.initialize(args.coordinator_address, args.num_processes, args.process_id)
    except (RuntimeError, ValueError) as e:
        raise UsageError(f"could not join the multi-process job ({str(e).splitlines()[0][:200]}); "
                         "give --coordinator-address, --num-processes and --process-id, or JAX's "
                         "JAX_* environment") from None


def enable_compilation_cache() -> None:
    """Keeps compiled steps across processes, so a resumed run starts in seconds.

    JAX_COMPILATION_CACHE_DIR, when set, wins; JAXPRUNE_XLA_CACHE=0 turns it off.
    """
    import jax

    if os.environ.get("JAXPRUNE_XLA_CACHE", "1") == "0" or jax.config.jax_compilation_cache_dir:
        return
    jax.config.update("jax_compilation_cache_dir", str(Path("~/.cache/jaxprune/xla").expanduser()))


# XLA's flags for deterministic GPU kernels; read once, when the backend starts.
DETERMINISTIC_XLA_FLAGS = ("--xla_gpu_deterministic_ops=true", "--xla_gpu_exclude_nondeterministic_ops=true")


def request_determinism() -> None:
    """Adds the deterministic-kernel flags to XLA_FLAGS, before JAX starts its backend."""
    flags = os.environ.get("XLA_FLAGS", "").split()
    os.environ["XLA_FLAGS"] = " ".join([*flags, *(f for f in DETERMINISTIC_XLA_FLAGS if f not in flags)])


def _usage(message: str) -> int:
    from jaxprune.cli.parser import EXIT_USAGE

    print(f"jaxprune: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    from jaxprune.cli.commands import COMMANDS
    from jaxprune.cli.parser import EXIT_USAGE, _preset_asked, build_parser

    parser = build_parser(_preset_asked(argv))
    args = parser.parse_args(argv)
    if getattr(args, "deterministic", None):
        request_determinism()
    if getattr(args, "host_timeout", None) is not None:
        if args.host_timeout <= 0:
            return _usage(f"--host-timeout must be > 0 seconds, got {args.host_timeout}")
        os.environ["JAXPRUNE_HOST_TIMEOUT_S"] = str(args.host_timeout)
    from jaxprune.runtime import hosts

    hosts.request_collective_timeouts()
    enable_compilation_cache()
    from jaxprune.training.checkpoint import WriteError, install_quiet_hooks, storage_cause

    install_quiet_hooks()
    from jaxprune.runtime.interrupt import Interrupted

    try:
        _join_job(args)
        # Training stops at its next safe point; the rest write through temporary names and stop at once.
        scope = interrupt.stop_at_safe_points if args.command in ("train", "study") else interrupt.stop_at_once
        with scope():
            try:
                return _leave_job(COMMANDS[args.command](args))
            except Exception as e:
                # A library wrapped the stop in an error of its own (Orbax's reads do): it is the stop.
                if scope is interrupt.stop_at_once and (signum := interrupt.requested()) is not None:
                    raise Interrupted(signum) from e
                raise
    except UserError as e:  # every module's own kind, one line each
        print(f"jaxprune {args.command}: error: {e}", file=sys.stderr)
        return _leave_job(EXIT_USAGE)
    except Interrupted as e:
        if args.command in ("train", "study"):
            print(f"jaxprune {args.command}: {e} after saving the last epoch; rerun the same command to resume",
                  file=sys.stderr)
        else:
            print(f"jaxprune {args.command}: {e}; what it had written before is left as it was", file=sys.stderr)
        return _leave_job(e.exit_code)
    except KeyboardInterrupt:
        print(f"jaxprune {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return _leave_job(130)
    except BrokenPipeError:  # `jaxprune report ... | head`: the reader left; end quietly, as SIGPIPE would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return _leave_job(141)
    except (WriteError, OSError) as e:
        cause = storage_cause(e)
        if not isinstance(e, WriteError) and cause is None:
            raise
        text = str(e) if isinstance(e, WriteError) else (
            f"cannot write {getattr(e, 'filename', None) or 'a file'} ({cause}); free space (or make the "
            "folder writable) and rerun the same command to resume")
        print(f"jaxprune {args.command}: error: {text}", file=sys.stderr)
        # At once: Orbax's threads of a failed write can wait minutes for a folder
        # that never appears. Everything kept is already on disk.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    except Exception:
        from jaxprune.runtime import hosts

        if hosts.count() > 1:  # out at once (see _leave_job), with what to do
            import traceback

            traceback.print_exc()
            e = sys.exc_info()[1]
            print(f"jaxprune {args.command}: error: this process of the job failed ({type(e).__name__}: "
                  f"{(str(e).splitlines() or [''])[0][:160]}); if another host died, rerun the same "
                  "command on every host to resume", file=sys.stderr)
            _leave_job(1)
        raise


def _leave_job(code: int) -> int:
    """Returns `code`; in a multi-process job that failed, exits at once instead.

    A process that exits normally waits at JAX's shutdown barrier for the
    others, which may be waiting for it in a collective: both would hang until
    the heartbeat timeout. Leaving at once lets JAX tell the other processes
    that this one died, and they end with that line.
    """
    from jaxprune.runtime import hosts

    if code and hosts.count() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def __getattr__(name: str):
    import importlib
    import pkgutil

    if name.startswith("__"):
        raise AttributeError(name)
    if name in {m.name for m in pkgutil.iter_modules(__path__)}:  # a submodule not imported yet
        return importlib.import_module(f"{__name__}.{name}")
    for module in ("parser", "commands"):
        served = importlib.import_module(f"{__name__}.{module}")
        if hasattr(served, name):
            return getattr(served, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
