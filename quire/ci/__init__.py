"""The pipeline API that `.quire/ci.py` imports.

```python
from quire.ci import job, Runtime, Skip

@job(inputs=["quire/push"])
def lint(rt: Runtime):
    rt.sh(["ruff", "check", "."], check=True)
```
"""

from quire.ci.pipeline import Skip, cache, job
from quire.jobhost.runtime import Runtime, ShOutput

__all__ = ["Runtime", "ShOutput", "Skip", "cache", "job"]
