"""Errors raised by workloads: ValueError subclasses whose message is one line naming the problem."""
from __future__ import annotations


class SpecError(ValueError):
    """A bad arrival or length spec string (or a bad length file); the message lists the accepted forms."""


class TraceError(ValueError):
    """A trace file that cannot be read: missing, unknown format, or a malformed line (message names file and line)."""
