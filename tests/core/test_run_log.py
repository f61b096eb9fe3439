"""A run folder's log.txt (vpp_core.run_log): records while the run lasts, the error that ends it, nothing after."""

import logging

import pytest

from vpp_core.run_log import run_log_file


def test_records_and_the_ending_error_go_into_the_file_and_the_handler_leaves(tmp_path):
    path = tmp_path / "log.txt"
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)
    try:
        with pytest.raises(RuntimeError, match="diverged"):
            with run_log_file(path):
                assert root.level == logging.INFO  # INFO records reach the file even under a quieter root
                logging.getLogger("vpp.test").info("step 1 loss 0.5")
                raise RuntimeError("the loss diverged")
        logging.getLogger("vpp.test").warning("after the run")
        assert root.level == logging.WARNING
    finally:
        root.setLevel(level)
    text = path.read_text()
    assert "INFO vpp.test: step 1 loss 0.5" in text
    assert "training stopped by an error" in text and "RuntimeError: the loss diverged" in text
    assert "after the run" not in text
    assert not any(getattr(h, "baseFilename", None) == str(path) for h in root.handlers)


def test_a_resumed_run_appends_to_its_file(tmp_path):
    path = tmp_path / "log.txt"
    for step in (1, 2):
        with run_log_file(path):
            logging.getLogger("vpp.test").info("run %d", step)
    assert [line.split(": ", 1)[1] for line in path.read_text().splitlines()] == ["run 1", "run 2"]
