"""`python -m quire.jobhost`: the job host (quire starts it; see quire/jobhost/main.py)."""

import sys

from quire.jobhost.main import main

sys.exit(main())
