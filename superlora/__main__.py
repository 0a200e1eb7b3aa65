"""`python -m superlora …` and the installed `superlora` command (see superlora.cli)."""

import sys

from superlora.cli import main

if __name__ == "__main__":
    sys.exit(main())
