"""``python -m exporter``: the same as the ``limpeza-exporter`` command."""

import sys

from exporter.cli import main

sys.exit(main())
