import pytest

from training.distributed import shutdown
from training.consolidated import ensure_single_process_groups


@pytest.fixture(scope="module", autouse=True)
def one_process_group():
    """A 1-process gloo group with TP = PP = 1, as gpt-generate/gpt-eval/gpt-finetune set up."""
    ensure_single_process_groups()
    yield
    shutdown()
