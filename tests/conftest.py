import os

import pytest
import torch

# Every kernel output starts as NaN in the tests: an element a kernel never writes fails.
os.environ["GATED_KERNELS_POISON_OUTPUTS"] = "1"
# Without a GPU the Triton kernels run in Triton's interpreter, on CPU tensors. It must be set
# before any kernel is defined (triton.jit decides at decoration time).
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
