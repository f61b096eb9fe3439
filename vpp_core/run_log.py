"""A run folder's log.txt: the log records of a training run, and the error that ended it, kept beside its results.

Both trainers use it, on their main process, so that what a run logged survives the terminal it ran in.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def run_log_file(path: str | Path) -> Iterator[logging.Handler]:
    """While the block runs, copy every record of INFO and above into `path` (appended: a resumed run continues its
    file), with the root logger lowered to INFO if it was above. An error that ends the block goes into the file as
    well, and only there: the console shows it as it propagates. The handler is detached however the block ends, so
    a later run in the same process does not write into this run's file."""
    root = logging.getLogger()
    handler = logging.FileHandler(path)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(FORMAT))
    level = root.level
    if level > logging.INFO:
        root.setLevel(logging.INFO)
    root.addHandler(handler)
    try:
        yield handler
    except BaseException:
        handler.handle(root.makeRecord(root.name, logging.ERROR, __file__, 0, "training stopped by an error", None,
                                       sys.exc_info()))
        raise
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(level)
