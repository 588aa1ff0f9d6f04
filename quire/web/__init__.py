"""`quire ci serve`: a read-only web view of the run store, with live logs.

    app.py      the Starlette application: routes, headers, templates
    index.py    the SQLite index of runs (a cache beside the records, rebuildable)
    lookup.py   names in URLs checked against the store; runs found by id wherever they moved
    logview.py  pages of a job's log.jsonl by byte offset, rendered as HTML
    ansi.py     terminal output (ANSI SGR colours, carriage returns) as escaped HTML
    live.py     server-sent events following a running run's logs and records
    server.py   uvicorn in the foreground, stopped cleanly by SIGINT/SIGTERM
    protocol.py uvicorn's h11 protocol with a deadline for reading each request

Nothing here writes to the run store; the only file it writes is its own
index. The core (`quire.ci`) never imports this package.
"""
