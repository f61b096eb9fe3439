"""Shared test setup: deterministic, quiet, small."""

import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import contextlib  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared"
REFERENCE_DATA = SHARED / "reference_data"


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny random SVD folder and CLIP folder, saved with save_pretrained (built once per test session)."""
    from video_models.builders import make_tiny_video_model_folders

    return make_tiny_video_model_folders(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(autouse=True)
def restore_float32_matmul_precision():
    """The evaluator, the server and the harnesses set torch's float32 matmul precision for their whole process; a
    test that runs them must not hand its setting on to the tests after it."""
    before = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(before)


@pytest.fixture
def reference_data() -> Path:
    if not REFERENCE_DATA.is_dir():
        pytest.skip(f"reference data not found at {REFERENCE_DATA}")
    return REFERENCE_DATA


@pytest.fixture
def forbid_host_syncs():
    """`with forbid_host_syncs(): ...` raises at any operation that makes the host wait for the GPU (CUDA only)."""

    @contextlib.contextmanager
    def forbidden():
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")

    return forbidden
