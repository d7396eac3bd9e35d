"""Small products run on one thread; large ones on all of them."""

import numba

from mixlocal.quant.threads import PARALLEL_MIN_BYTES, set_threads, threads_for


def test_small_products_run_on_one_thread_and_the_count_is_restored():
    before = set_threads(numba.config.NUMBA_NUM_THREADS)
    with threads_for(PARALLEL_MIN_BYTES - 1):
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == before
    with threads_for(PARALLEL_MIN_BYTES):
        assert numba.get_num_threads() == before


def test_the_count_is_restored_when_the_product_fails():
    before = numba.get_num_threads()
    try:
        with threads_for(0):
            raise RuntimeError("kernel failed")
    except RuntimeError:
        pass
    assert numba.get_num_threads() == before
