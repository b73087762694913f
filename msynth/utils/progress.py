"""A workflow run's progress on the console: which stages run, ``n of N`` nodes, elapsed time and the time left.

:class:`Progress` is the status callback of Nipype's plugins (called as each node starts and ends); the two plugins
below tell it the nodes to run first, and the MultiProc one runs each node through :func:`msynth.utils.logs.run_node`
so that the worker logs like the main process.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections.abc import Iterable

from nipype.pipeline.plugins.linear import LinearPlugin
from nipype.pipeline.plugins.multiproc import MultiProcPlugin
from tqdm import tqdm

from msynth.utils import logs

__all__ = ["LINE_INTERVAL_S", "MsynthLinearPlugin", "MsynthMultiProcPlugin", "Progress", "stage_of"]

LOGGER = logging.getLogger("msynth.progress")

#: Seconds between two progress lines where stderr is not a terminal (a SLURM log, a pipe).
LINE_INTERVAL_S = 60.0
#: At most this many running stages are named; the others are counted.
SHOWN_STAGES = 3
_SESSION_WF = re.compile(r"^ses_(?P<label>[^_.]+)_wf$")


def stage_of(fullname: str) -> str:
    """The stage a node belongs to, from its place in the workflow: ``ses-<S> <workflow>`` below the run's own.

    >>> stage_of("sub_01_wf.ses_1_wf.coregister_T2w_wf.n4")
    'ses-1 coregister_T2w'
    >>> stage_of("group_wf.dvr_reference")
    'dvr_reference'
    """
    parts = fullname.split(".")[1:]
    session = _SESSION_WF.match(parts[0]) if len(parts) > 1 else None
    if session or parts[0] == "single_session_wf":
        parts = parts[1:]
    stage = parts[0].removesuffix("_wf")
    return f"ses-{session['label']} {stage}" if session else stage


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}" if minutes >= 60 else f"{minutes:02d}:{seconds:02d}"


class Progress:
    """Nipype status callback showing a run's progress: a tqdm bar on a terminal; elsewhere one line a minute
    (``msynth.progress`` at INFO, so the log file has it too) and one at the end.

    Only the workflow's own nodes count (:meth:`begin`), not the per-item jobs MapNodes add while running.
    """

    def __init__(self, label: str, *, bar: bool | None = None, interval_s: float = LINE_INTERVAL_S) -> None:
        self.label = label
        self._bar_wanted = sys.stderr.isatty() if bar is None else bar
        self._interval_s = 1.0 if self._bar_wanted else interval_s
        self._nodes: set[int] = set()
        self._running: dict[int, str] = {}
        self._finished: set[int] = set()
        self._failed = 0
        self._start = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._bar: tqdm | None = None
        self._ticker: threading.Thread | None = None

    def begin(self, nodes: Iterable) -> None:
        """Start counting the workflow's ``nodes`` and showing the progress."""
        self._nodes = {id(node) for node in nodes}
        self._start = time.monotonic()
        if self._bar_wanted:
            self._bar = tqdm(total=len(self._nodes), desc=self.label, file=sys.stderr, dynamic_ncols=True,
                             bar_format="{desc}: {n_fmt} of {total_fmt} nodes |{bar}| {elapsed} elapsed, "
                                        "{remaining} left{postfix}")
        self._ticker = threading.Thread(target=self._tick, name="msynth-progress", daemon=True)
        self._ticker.start()

    def __call__(self, node, status: str) -> None:
        """Nipype's callback: ``status`` is ``start``, ``end`` or ``exception``."""
        if id(node) not in self._nodes:
            return
        with self._lock:
            if status == "start":
                self._running[id(node)] = stage_of(node.fullname)
            else:  # cached and run-without-submitting nodes may end without a start
                self._running.pop(id(node), None)
                self._finished.add(id(node))
                self._failed += status == "exception"
        if self._bar is not None:
            self._bar.set_postfix_str(self._stages(), refresh=False)
            self._bar.update(len(self._finished) - self._bar.n)

    def line(self) -> str:
        """The progress in words, e.g. ``sub-01: 12 of 80 nodes, 02:10 elapsed, about 11:40 left; running …``."""
        with self._lock:
            done, total, failed, stages = len(self._finished), len(self._nodes), self._failed, self._stages()
        elapsed = time.monotonic() - self._start
        text = f"{self.label}: {done} of {total} nodes, {_clock(elapsed)} elapsed"
        if 0 < done < total:
            text += f", about {_clock(elapsed * (total - done) / done)} left"
        if failed:
            text += f", {failed} failed"
        return f"{text}; {stages}" if stages else text

    def close(self) -> None:
        """Stop showing the progress; without a bar, say where the run ended."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        if self._bar is not None:
            self._bar.close()
        elif self._ticker is not None:
            LOGGER.info(self.line())

    def _stages(self) -> str:
        stages = sorted(set(self._running.values()))
        if not stages:
            return ""
        more = f" and {len(stages) - SHOWN_STAGES} more" if len(stages) > SHOWN_STAGES else ""
        return "running " + ", ".join(stages[:SHOWN_STAGES]) + more

    def _tick(self) -> None:
        while not self._stop.wait(self._interval_s):
            if self._bar is not None:
                self._bar.refresh()
            else:
                LOGGER.info(self.line())


class _ReportingPlugin:
    """What both plugins add to Nipype's: ``progress`` as the status callback, told the graph's nodes at the start.

    ``progress`` is not among the plugin arguments, which Nipype hands to each MapNode, pickled into the workers."""

    def __init__(self, plugin_args: dict, *, progress: Progress) -> None:
        super().__init__(plugin_args=plugin_args)
        self._status_callback = progress

    def run(self, graph, config, updatehash=False):
        self._status_callback.begin(graph.nodes)
        return super().run(graph, config, updatehash=updatehash)


class MsynthLinearPlugin(_ReportingPlugin, LinearPlugin):
    """Nipype's Linear plugin (nodes one after the other, in this process) reporting to ``progress``."""


class MsynthMultiProcPlugin(_ReportingPlugin, MultiProcPlugin):
    """Nipype's MultiProc plugin reporting to ``progress``, whose workers log like this process
    (:func:`msynth.utils.logs.run_node`)."""

    def _submit_job(self, node, updatehash=False):
        self._taskid += 1
        future = self.pool.submit(logs.run_node, logs.current(), node, updatehash, self._taskid)
        future.add_done_callback(self._async_callback)
        self._task_obj[self._taskid] = future
        return self._taskid
