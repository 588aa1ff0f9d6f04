"""What a run's page shows from the run's own log.jsonl: its events and image build output.

Only the last `WINDOW_BYTES` of the log are read (a docker build can write
a lot of output into it). Event kinds this version does not know are shown
by name with their plain fields; nothing in them is trusted to be small.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quire.ci.store.records import JobState
from quire.ci.store.runs import RunDir
from quire.web.logview import LogRenderer, read_before

WINDOW_BYTES = 256 * 1024
MAX_NOTES = 200
_FIELD_CHARS = 300


@dataclass
class RunNote:
    """One run event as a row: when, what, and its fields as text."""

    t: str
    kind: str
    text: str


@dataclass
class RunEvents:
    notes: list[RunNote] = field(default_factory=list)
    build_html: str = ""


def run_events(path: Path) -> RunEvents:
    """The run events and rendered image build output at the end of a run log."""
    try:
        with open(path, "rb") as handle:
            window = read_before(handle, None, WINDOW_BYTES)
    except OSError:
        return RunEvents()
    notes: list[RunNote] = []
    build: list[dict[str, Any]] = []
    for event in window.events:
        kind = str(event.get("event", "?"))
        if kind == "image-build-output":
            stream = event.get("stream")
            build.append({**event, "event": stream if stream == "stderr" else "stdout"})
        else:
            notes.append(RunNote(str(event.get("t", "")), kind, _fields(event)))
    return RunEvents(notes[-MAX_NOTES:], LogRenderer().render(build))


def _fields(event: dict[str, Any]) -> str:
    parts = []
    for key, value in event.items():
        if key in ("t", "event") or isinstance(value, dict | list):
            continue
        text = str(value)
        if len(text) > _FIELD_CHARS:
            text = text[:_FIELD_CHARS] + "…"
        parts.append(f"{key}={text}")
    return " ".join(parts)


def job_order(run: RunDir, states: list[JobState]) -> list[str]:
    """The run's jobs in the order they started, then any job without a state yet."""
    order = [state.job_id for state in states]
    try:
        names = sorted(os.listdir(run.path / "jobs"))
    except OSError:
        names = []
    present = set(names)
    return [job for job in order if job in present] + [
        name for name in names if name not in order and not name.startswith(".")
    ]
