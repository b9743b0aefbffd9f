"""`flexsp` on the command line when installed with pip (`python -m flexsp` too): runs the
flexsp command the wheel carries, with the same arguments."""

import os
import sys
from pathlib import Path


def main():
    binary = Path(__file__).resolve().parent / "bin" / "flexsp"
    if not binary.exists():
        sys.exit("flexsp: this package has no flexsp command (built without it); use the build tree's "
                 "apps/flexsp/flexsp")
    os.execv(str(binary), [str(binary)] + sys.argv[1:])


if __name__ == "__main__":
    main()
