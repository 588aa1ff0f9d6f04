"""Executors turn a `Command` into a running process: on the host, or in the run's container.

Both are context managers: entering sets up (nothing, or image + container),
leaving tears down, whichever way the block is left.
"""

from quire.ci.run.executors.base import Command, ExecResult, Executor

__all__ = ["Command", "ExecResult", "Executor"]
