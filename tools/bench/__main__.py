"""`python -m tools.bench`: run the benchmark and print its report."""

import sys

from .run import main

sys.exit(main())
