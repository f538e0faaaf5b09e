"""`python -m kubeforge_serving export|quantize|repository|serve|smoke|bench|convert|install-triton`."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
