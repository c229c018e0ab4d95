"""``python -m wirespeed.bench [options]``: the lab without the wirespeed command."""

from __future__ import annotations

import sys

from wirespeed.bench.cli import main

sys.exit(main())
