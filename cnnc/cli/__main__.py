"""`python -m cnnc.cli ...`: the same as the `cnnc` command (and `python -m cnnc`)."""
import sys

from . import main

sys.exit(main())
