"""Shared plumbing: BIDS queries, validation, derivatives bookkeeping, logging."""
