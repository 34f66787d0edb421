"""``python -m residuals.licensing``: the licensing service."""

import sys

from residuals.licensing.app import main

sys.exit(main())
