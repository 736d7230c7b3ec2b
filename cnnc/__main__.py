"""`python -m cnnc ...`: the same as the `cnnc` command."""
import sys

from .cli import main

sys.exit(main())
