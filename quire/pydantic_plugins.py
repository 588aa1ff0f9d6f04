"""quire's own models are built without pydantic plugins.

The first time pydantic builds a model it asks `importlib.metadata` for
every installed package's entry points, looking for plugins that observe
validation: ~20 ms of every run on a 2 vCPU VM in a development
environment (~10 ms scanning, ~9 ms importing importlib.metadata), and a
plugin has no business watching quire write its records. pydantic offers
`PYDANTIC_DISABLE_PLUGINS` for this, but an environment variable would
reach every command a job runs, whose own pydantic code may want its
plugins. So quire tells pydantic's loader, in this process only, that the
plugins are loaded and there are none: the commands jobs run keep theirs,
but a host-mode job's own Python code, which runs inside quire, sees none
either. If a pydantic release moves that cache, this does nothing and
pydantic scans as before.
"""

from __future__ import annotations


def disable() -> None:
    """Make pydantic's plugin loader find no plugins in this process (see the module)."""
    from pydantic.plugin import _loader

    if getattr(_loader, "_plugins", None) is None:
        _loader._plugins = {}
