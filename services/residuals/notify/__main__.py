"""``python -m residuals.notify``: the notify service."""

import sys

from residuals.notify.app import main

sys.exit(main())
