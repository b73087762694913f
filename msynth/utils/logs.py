"""Where msynth's messages go — a terse console and the run's log file — in the main process and in every worker.

Nipype runs nodes in MultiProc worker processes that are forked, or started from a forkserver once torch is loaded
(:func:`msynth.runner.multiproc_arguments`). Handlers set in the main process reach forked workers only, so each
worker sets up the same handlers itself before it runs a node (:func:`run_node`), from the small picklable
:class:`LogSetup` of the run: one code path whatever the start method. Each process appends whole lines to the log
file (``O_APPEND``), which keeps them intact; a queue to a listener in the main process would need handing to each
worker when it starts, which Nipype's process pool does not allow.
"""

from __future__ import annotations

import importlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

__all__ = ["FORMAT", "LogSetup", "configure", "current", "run_node"]

FORMAT = "%(asctime)s %(name)s %(levelname)s: %(message)s"
#: Nipype's loggers, whose levels its ``update_logging`` would reset from its config.
NIPYPE_LOGGERS = ("nipype.workflow", "nipype.interface", "nipype.utils", "nipype.filemanip")

_current: LogSetup | None = None


@dataclass(frozen=True)
class LogSetup:
    """How a run logs: the verbosity (``-v`` count) and the log file every process appends to."""

    verbose: int = 0
    log_file: Path | None = None


class _StderrHandler(logging.StreamHandler):
    """A stream handler on whatever ``sys.stderr`` is at each message (pytest replaces it); in the main process,
    which draws the progress bar, lines are written around the bar, never through it."""

    def __init__(self, *, around_bar: bool) -> None:
        super().__init__()
        self.around_bar = around_bar

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:
        if not self.around_bar:
            return super().emit(record)
        with tqdm.external_write_mode(file=sys.stderr):
            super().emit(record)


class _ConsoleFilter(logging.Filter):
    """The console by default: warnings and errors, and msynth's own INFO lines of the main process — not Nipype's
    INFO, nor the INFO lines of msynth's nodes (both in the log file), nor Nipype's messages about a crashed node,
    whose tracebacks the crash reports hold (the runner's one line says what failed); ``-v`` shows them all."""

    CRASH_PREFIXES = ("[Node] Error on", "Node %s failed to run", "Saving crash info", "could not run node",
                      "Storing result file without outputs")

    def __init__(self, verbose: int, in_node: bool) -> None:
        super().__init__()
        self.verbose, self.in_node = verbose, in_node

    def filter(self, record: logging.LogRecord) -> bool:
        if self.verbose:
            return True
        if record.name.startswith("nipype.") and str(record.msg).startswith(self.CRASH_PREFIXES):
            return False
        return record.levelno >= logging.WARNING or (not self.in_node and record.name.split(".")[0] == "msynth")


def configure(setup: LogSetup, *, in_node: bool = False) -> None:
    """Install the console (and log-file) handlers on msynth's, Nipype's and the warnings' loggers.

    msynth logs at INFO (DEBUG with ``-v``), Nipype at INFO (DEBUG with ``-vv``), so that the log file holds
    Nipype's node log too; ``in_node`` marks a worker running a node, whose INFO lines stay off the console.
    """
    global _current
    importlib.import_module("nipype")  # its first import sets its loggers' levels from its config: set ours after

    console = _StderrHandler(around_bar=not in_node)
    console.setFormatter(logging.Formatter(FORMAT, "%H:%M:%S"))
    console.addFilter(_ConsoleFilter(setup.verbose, in_node))
    handlers: list[logging.Handler] = [console]
    if setup.log_file is not None:
        to_file = logging.FileHandler(setup.log_file)
        to_file.setFormatter(logging.Formatter(FORMAT))
        handlers.append(to_file)
    for name in ("msynth", "nipype", "py.warnings"):
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.propagate = False
    logging.getLogger("msynth").setLevel(logging.DEBUG if setup.verbose else logging.INFO)
    for name in NIPYPE_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if setup.verbose > 1 else logging.INFO)
    logging.raiseExceptions = False  # a log file on a full disk must not print tracebacks; the console still shows
    logging.captureWarnings(True)
    if not in_node:
        _current = setup


def current() -> LogSetup | None:
    """The setup last configured in this process (None: msynth used as a library, its logging left alone)."""
    return _current


def run_node(setup: LogSetup | None, node, updatehash: bool, taskid: int) -> dict:
    """Nipype's MultiProc job, in a worker: log as ``setup`` says (once per worker), then run the node."""
    from nipype.pipeline.plugins.multiproc import run_node as nipype_run_node

    global _worker_setup
    if setup is not None and setup != _worker_setup:
        configure(setup, in_node=True)
        _worker_setup = setup
    return nipype_run_node(node, updatehash, taskid)


_worker_setup: LogSetup | None = None
