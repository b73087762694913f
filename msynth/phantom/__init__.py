"""msynth-phantom: a synthetic multiple sclerosis cohort with known truth, built on real anatomy.

The public entry point is :func:`generate_cohort` (the ``msynth-phantom`` command line calls it).
"""

from .cohort import CohortResult, check_arguments, default_n_procs, generate_cohort, participant_labels

__all__ = ["CohortResult", "check_arguments", "default_n_procs", "generate_cohort", "participant_labels"]
