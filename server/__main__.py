"""`python -m server` is the `cinfer` command."""

import sys

from .cli import main

sys.exit(main())
