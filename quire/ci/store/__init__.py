"""The run store: where runs live on disk and how they are read back.

runs.py (directories, states, the latest link), records.py (the YAML
records and their atomic writer), logs.py (JSON Lines), views.py (runs
read back for `runs`/`show`/`logs`), reconcile.py and liveness.py (runs
whose owner died).
"""
