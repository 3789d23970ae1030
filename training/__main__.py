"""`python -m reinf.training RUN_DIR`: one training run (see the package docstring for the contract)."""

import sys

from .run import main

sys.exit(main())
