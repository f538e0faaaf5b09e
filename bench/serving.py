"""Serving benchmark (see kubeforge_serving.bench): `python bench/serving.py [--iters N]`."""

from __future__ import annotations

import sys

from kubeforge_serving.bench import main

if __name__ == "__main__":
    sys.exit(main())
