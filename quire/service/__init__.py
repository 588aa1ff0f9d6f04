"""CI on push: a bare repository's post-receive hook, a durable queue, and a worker.

    hook.py     the post-receive entry point (stdlib only: it runs on every push)
    queues.py   the queue protocol (`RunQueue`) and which queue is configured (stdlib only)
    queue.py    the SQLite queue in the state directory (stdlib only, shared with the hook)
    pgqueue.py  the PostgreSQL queue (psycopg 3): claims with leases, LISTEN/NOTIFY
    pgschema.py its versioned schema and connections (`quire ci db migrate`)
    wake.py     how the hook wakes idle workers (datagram sockets; stdlib only)
    install.py  `quire ci hook install | uninstall`
    worker.py   `quire ci worker`: claims queued runs and runs each as a child `quire ci run`
    outcome.py  what a finished child left behind, read back from the run store
    recovery.py runs of a dead worker: reconciled, queued again once
    notes.py    each finished run's outcome as a line in refs/notes/quire

Nothing in this package is imported by the core (`quire.ci`); the hook's
path imports nothing outside the standard library and `quire.errors`
(and psycopg, only when a database is configured).
"""
