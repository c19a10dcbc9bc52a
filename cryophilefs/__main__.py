"""``python -m cryophilefs`` and the programs' entry points.

Light on purpose: the mount first starts itself again with huge pages for
its heap (hugepages.py), before the heavy imports of mount.py."""

import sys

from .hugepages import start_again


def main() -> int:
    start_again()
    from .mount import main as mount_main
    return mount_main()


def mount_helper() -> int:
    start_again()
    from .mount import mount_helper as helper
    return helper()


if __name__ == "__main__":
    sys.exit(main())
