"""The history's base error, in a module of its own: a CLI names it among its user errors
without importing the database layer (sqlite-utils) for a job that records nothing."""

from __future__ import annotations


class StorageError(Exception):
    """Base class for every error the job history raises on purpose."""
