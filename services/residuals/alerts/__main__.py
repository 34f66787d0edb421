"""``python -m residuals.alerts``: the alerts service."""

import sys

from residuals.alerts.app import main

sys.exit(main())
