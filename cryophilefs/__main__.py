"""``python -m cryophilefs`` and the programs' entry points.

Light on purpose: the mount first starts itself again with huge pages for
its heap (hugepages.py), before the heavy imports of mount.py."""

import sys

from .hugepages import start_again


def main() -> int:
    try:
        start_again()
        from .mount import main as mount_main
    except KeyboardInterrupt:       # Ctrl-C in start-up: nothing mounted yet
        return _interrupted()
    return mount_main()


def mount_helper() -> int:
    try:
        start_again()
        from .mount import mount_helper as helper
    except KeyboardInterrupt:
        return _interrupted()
    return helper()


def _interrupted() -> int:
    print("cryophilefs: error: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
    sys.exit(main())
