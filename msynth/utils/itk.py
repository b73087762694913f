"""How msynth runs ITK (ANTsPy): on one thread, so that the same input gives the same bytes."""

from __future__ import annotations

import os

#: Threads of ITK in every msynth process. ITK's multithreaded sums depend on how the work is split among threads,
#: so its results changed with the thread count and even from run to run (issue 17, measured in
#: ``benchmarks/results/registration_repeats.md``: N4 by 2.8e-5 relative between 1 and 2 threads; the template
#: registration 1.7 mm apart over 12 repeats with 2 threads, identical with 1, at no measurable cost). msynth's
#: parallelism comes from running nodes side by side (``--nprocs``); ``--omp-nthreads`` sets torch's threads.
ITK_THREADS = 1


def single_threaded_itk() -> None:
    """Ask ITK for :data:`ITK_THREADS` thread(s) in this process.

    ITK reads ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` once per process, at its first threaded call; a later change
    has no effect (measured: 1 then 4, or 4 then 1, in one process ran both calls with the first count). The
    ``msynth`` command sets it before any work, so that the Nipype workers it forks inherit it, and every ITK node
    sets it again for workers started from a fresh process.
    """
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(ITK_THREADS)
