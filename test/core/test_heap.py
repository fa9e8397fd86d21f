"""release_free_memory: collects and trims without raising (core tier, no ROS, no torch)."""

import sys

import pytest

from csr_ros.core.state import heap

pytestmark = pytest.mark.core


def test_release_after_a_large_transient_allocation_returns_a_bool():
    junk = [{"seq": i, "text": "x" * 40} for i in range(200_000)]  # many small objects (like records)
    del junk
    assert isinstance(heap.release_free_memory(), bool)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_malloc_trim_is_found_on_linux_glibc():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    assert heap._malloc_trim() is not None
