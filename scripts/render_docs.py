"""Print what `make setup` installs beside the tracecap command, rendered from its usage tables
(tracecap/cli.py, tracecap/options.py, through tracecap/usage.py):

    python scripts/render_docs.py man    > tracecap.8      (tracecap(8), roff)
    python scripts/render_docs.py bash   > tracecap        (bash completion)

Run with the interpreter tracecap is installed into, so the pages describe the installed copy.
"""

from __future__ import annotations

import sys

from tracecap import cli

RENDERERS = {"man": cli.man_page, "bash": cli.bash_completion}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in RENDERERS:
        print(f"usage: render_docs.py {'|'.join(RENDERERS)}", file=sys.stderr)
        return 2
    sys.stdout.write(RENDERERS[argv[0]]())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
