"""The job host: where a pipeline's Python runs, in a process apart from quire's.

Lean on purpose (the standard library, `quire.errors`, `quire.ci.pipeline`):
it starts for every run. The protocol and the reasons are in
docs/architecture.md ("The job host").
"""
