"""BLAS and OpenMP threads in process workers: cpus // workers each, as loky and dask give
theirs, so that the workers' NumPy calls at once do not oversubscribe the machine."""

from __future__ import annotations

import os

import pytest

from nbparallel.options import usable_cpus

numpy = pytest.importorskip("numpy")
threadpoolctl = pytest.importorskip("threadpoolctl")


def blas_threads(_):
    """What a user's NumPy code in a task runs with: its BLAS libraries' thread counts."""
    numpy.ones((2, 2)) @ numpy.ones((2, 2))
    return {
        lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"
    }


def test_numpy_in_each_of_n_workers_gets_cpus_over_n_threads(session, monkeypatch):
    for name in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    session.configure(workers=2)
    assert session.map(blas_threads, range(4), chunksize=1) == [{max(usable_cpus() // 2, 1)}] * 4


def test_a_thread_variable_the_user_set_is_theirs_and_its_api_left_alone(session, monkeypatch):
    """OPENBLAS_NUM_THREADS set in the notebook's environment reaches the workers unchanged,
    and the other BLAS variables are not added beside it; OpenMP is still limited."""
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    session.configure(workers=2)
    seen = session.map(
        lambda _: tuple(
            os.environ.get(n)
            for n in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS")
        ),
        range(2),
    )
    assert seen == [("3", None, str(max(usable_cpus() // 2, 1)))] * 2
