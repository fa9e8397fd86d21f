"""``python -m csr_ros.cli ...``: the same as the ``csr-ros`` command."""

import sys

from csr_ros.cli import main

sys.exit(main())
