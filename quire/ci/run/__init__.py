"""One run, from start to finish: the orchestrator and what it drives.

orchestrator.py (a run's life), jobs.py (jobs in order, exception ->
status), runtime.py (what a job receives), executors/ (host, docker),
workspace.py (the commit's tree on disk), redact.py (secret masking).
"""
