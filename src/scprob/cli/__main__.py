"""``python -m scprob.cli ...``: the ``scprob`` command (without runpy's warning about
running ``scprob.cli.main``, a module the package has already imported)."""

import sys

from .main import main

sys.exit(main())
