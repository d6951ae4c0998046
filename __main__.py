"""`python -m dlc` is the `dlc` command."""
import sys

from .cli import main

sys.exit(main())
