"""Status badges: `/badge/<repo>.svg?branch=main`, an SVG for a README.

    passing   the newest finished run of the branch completed
    failing   it failed
    running   the branch's newest run is still going
    unknown   the branch has no finished run (or the repository no runs yet)

Cancelled runs say nothing about the code: the run before them counts.
Without `?branch=`, every ref counts. The SVG holds only fixed words and
colours (nothing from the request or the store), so there is nothing in it
to escape; it is cached for `MAX_AGE_S` seconds.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from quire.ci.store.runs import RunState
from quire.ci.store.views import RunSummary

Status = Literal["passing", "failing", "running", "unknown"]
MAX_AGE_S = 30
COLOURS: dict[Status, str] = {
    "passing": "#2e7d32",
    "failing": "#c62828",
    "running": "#1565c0",
    "unknown": "#757575",
}
LABEL = "quire"
# Width of a character of 11px Verdana, near enough for these few fixed words.
CHAR_W = 7


def status_of(runs: Iterable[RunSummary], branch: str | None) -> Status:
    """The badge of `runs` (newest first) for `branch` (None: any ref)."""
    ref = None if branch is None else f"refs/heads/{branch}"
    first = True
    for run in runs:
        if ref is not None and run.ref != ref:
            continue
        if run.state in (RunState.pending, RunState.active):
            if first:
                return "running"
            continue
        first = False
        if run.state == RunState.complete:
            return "passing"
        if run.state == RunState.failed:
            return "failing"
    return "unknown"


def svg(status: Status) -> str:
    """A flat badge: `quire | <status>`."""
    left = len(LABEL) * CHAR_W + 10
    right = len(status) * CHAR_W + 10
    width = left + right
    colour = COLOURS[status]
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="20" role="img" '
        f'aria-label="{LABEL}: {status}"><title>{LABEL}: {status}</title>'
        f'<rect width="{left}" height="20" fill="#555"/>'
        f'<rect x="{left}" width="{right}" height="20" fill="{colour}"/>'
        '<g fill="#fff" text-anchor="middle" font-family="Verdana,DejaVu Sans,sans-serif" '
        'font-size="11">'
        f'<text x="{left / 2}" y="14">{LABEL}</text>'
        f'<text x="{left + right / 2}" y="14">{status}</text></g></svg>'
    )
