"""`quire ci serve`: the read-only web view of the run store (quire.web).

Nothing of the web stack (starlette, uvicorn, jinja2) is imported until the
command runs, so `quire --help` and `quire ci run` never load it.
"""

from __future__ import annotations

from typing import Annotated

import typer


def serve_command(
    host: Annotated[
        str,
        typer.Option("--host", help="Address to listen on; anything but loopback is public."),
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="Port (0: any free one).")
    ] = 8765,
    rebuild_index: Annotated[
        bool,
        typer.Option("--rebuild-index", help="Rebuild the runs index from the records first."),
    ] = False,
) -> int:
    """Serve a read-only web page of all runs, with live logs, until Ctrl-C or SIGTERM.

    With a database configured: every worker's runs, from the run index.
    """
    from quire.paths import state_dir
    from quire.service.queues import database_url
    from quire.web.server import serve

    url = database_url()
    if url is None:
        return serve(state_dir(), host, port, rebuild_index=rebuild_index)
    from quire.service.pgschema import require_psycopg

    require_psycopg(url)  # before the reader, which imports psycopg
    from quire.service.pgindex.reader import MirrorRuns

    # The pages read the mirror of the run index, kept current while the server runs.
    runs = MirrorRuns(url, state_dir())
    with runs.follower():
        return serve(runs.mirror.root, host, port, rebuild_index=rebuild_index)
