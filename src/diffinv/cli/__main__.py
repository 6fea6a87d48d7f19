"""`python -m diffinv.cli …`: the `diffinv` command (also under `accelerate launch -m diffinv.cli`)."""

import sys

from . import main

sys.exit(main())
