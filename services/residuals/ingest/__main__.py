"""``python -m residuals.ingest``: the ingest gateway."""

import sys

from residuals.ingest.app import main

sys.exit(main())
