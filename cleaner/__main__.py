"""python -m cleaner: the same as limpeza-cleaner."""

import sys

from cleaner.cli import main

sys.exit(main())
