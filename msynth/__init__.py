"""msynth: synthesise missing FLAIR and [11C]PIB myelin maps for multiple sclerosis cohorts."""

__version__ = "0.1.0.dev0"
