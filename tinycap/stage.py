"""Entry point shared by the thin scripts in stages/: logging to stderr, one-line errors."""

import logging
import sys

from tinycap.errors import TinyCapError


def run(main):
    """Call `main()`; bad input ends the process with one line and exit status 1."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        main()
    except TinyCapError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
