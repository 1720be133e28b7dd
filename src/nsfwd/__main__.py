"""`python -m nsfwd` runs the command line."""

import sys

from nsfwd.cli import main

sys.exit(main())
