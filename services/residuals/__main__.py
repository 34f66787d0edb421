import sys

from residuals.cli import main

sys.exit(main())
