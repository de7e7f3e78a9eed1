"""`python -m lens_core <step>`: the `lens` command without an installed entry point."""
import sys

from lens_core.cli import main

sys.exit(main())
