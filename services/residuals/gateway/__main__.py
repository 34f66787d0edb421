"""``python -m residuals.gateway``: the HTTP/JSON gateway."""

import sys

from residuals.gateway.app import main

sys.exit(main())
