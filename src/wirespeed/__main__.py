"""``python -m wirespeed`` runs the command line."""

import sys

from wirespeed.cli import main

sys.exit(main())
