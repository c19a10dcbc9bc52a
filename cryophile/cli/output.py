"""Where restore writes: stdout, or a file that appears only when complete."""

from __future__ import annotations

import os
import sys

from .. import errors


class Output:
    """stdout, or a file that appears only when complete."""

    def __init__(self, path: str):
        self.path = path
        if path == "-":
            if sys.stdout.isatty():
                raise errors.UsageError("refusing to write an archive to a terminal: "
                                        "use -o FILE or a pipe")
            self.file, self.tmp = sys.stdout.buffer, None
            return
        self.tmp = os.path.join(os.path.dirname(os.path.abspath(path)),
                                f".{os.path.basename(path)}.cryophile-{os.getpid()}")
        try:
            self.file = open(self.tmp, "wb")
        except OSError as exc:
            raise errors.from_oserror(exc, f"cannot write output {path}") from None

    def commit(self) -> None:
        if self.tmp is None:
            return
        try:
            self.file.close()
            os.rename(self.tmp, self.path)
        except OSError as exc:
            raise errors.from_oserror(exc, f"cannot write output {self.path}") from None

    def discard(self) -> None:
        if self.tmp is not None:
            self.file.close()
            if os.path.exists(self.tmp):
                os.unlink(self.tmp)
