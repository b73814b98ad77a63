"""``python -m gpt_workload.cli``: the ``wse-sim`` command line."""

import sys

from gpt_workload.cli import main

sys.exit(main())
