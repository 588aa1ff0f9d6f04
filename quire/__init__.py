"""quire: a CI runner for self-hosted git repositories.

Pipelines are Python (`.quire/ci.py`, API in `quire.ci`); `quire ci run`
runs one commit's pipeline on the host or in one container per run.
"""

__version__ = "0.1.0"
