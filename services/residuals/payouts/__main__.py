"""``python -m residuals.payouts``: the payouts service."""

import sys

from residuals.payouts.app import main

sys.exit(main())
