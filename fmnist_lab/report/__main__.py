"""`python -m fmnist_lab.report DIR [--log-y] [--readme FILE]` (see fmnist_lab.report.command)."""

import sys

from fmnist_lab.report.command import main

sys.exit(main())
