"""Who can reach the local dask cluster nbparallel starts (only this kernel), a cluster the user
gives (theirs, untouched), and a cluster process that does not start (a bounded, clear error)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psutil
import pytest

from nbparallel import ClusterStartError, parallel
from nbparallel.backends import dask_cluster

LOOPBACK = {"127.0.0.1", "::1"}


@pytest.fixture(scope="module")
def cluster():
    """The scheduler and two workers that `parallel.configure(backend="dask")` and one map start
    (set up before the leak check of the first test that uses them, so they are not leaks)."""
    saved = parallel.options
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    parallel.configure(backend="dask", workers=2, progress=False)
    assert parallel.map(abs, [-1, -2]) == [1, 2]
    yield [child for child in psutil.Process().children(recursive=True) if child.pid not in before]
    parallel.shutdown()
    parallel.configure(backend=saved.backend, workers=saved.workers, progress=saved.progress)


def listening(process: psutil.Process) -> list[tuple[str, int]]:
    """The (ip, port) pairs `process` accepts connections on."""
    return [
        (connection.laddr.ip, connection.laddr.port)
        for connection in process.net_connections(kind="inet")
        if connection.status == psutil.CONN_LISTEN
    ]


def test_the_scheduler_and_every_worker_listen_on_loopback_only_and_on_one_port_each(cluster):
    assert len(cluster) == 3  # a scheduler and two workers
    for process in cluster:
        addresses = listening(process)
        assert {ip for ip, _ in addresses} <= LOOPBACK, (process.cmdline()[3:], addresses)
        # One port each: the cluster's TLS port, no HTTP port (dashboard, metrics).
        assert len({port for _, port in addresses}) == 1, (process.cmdline()[3:], addresses)


def scheduler_port(scheduler: psutil.Process, workers: list[psutil.Process]) -> int:
    """The port of `scheduler` that its workers are connected to."""
    connected = {
        connection.raddr.port
        for worker in workers
        for connection in worker.net_connections(kind="inet")
        if connection.raddr and connection.status == psutil.CONN_ESTABLISHED
    }
    (port,) = connected & {port for _, port in listening(scheduler)}
    return port


# Run by a second process, as anyone on this machine could: connect to the scheduler with a plain
# client (tls:// with no certificate, plain tcp://) or with a certificate of its own.
STRANGER = """
import json, os, sys
import distributed
from distributed.security import Security

attempts = {"no certificate": ("tls", None), "plain tcp": ("tcp", None),
            "a certificate of its own": ("tls", Security.temporary())}
outcomes = {}
for name, (protocol, security) in attempts.items():
    address = f"{protocol}://127.0.0.1:{sys.argv[1]}"
    try:
        with distributed.Client(address, timeout=3, security=security) as client:
            outcomes[name] = f"ran a task in pid {client.submit(os.getpid).result(timeout=3)}"
    except Exception as error:
        outcomes[name] = f"refused: {type(error).__name__}"
print(json.dumps(outcomes))
"""


def test_a_client_without_this_kernels_credentials_cannot_run_a_task(cluster):
    (scheduler,) = [process for process in cluster if "scheduler" in process.cmdline()]
    # The scheduler's port is in the workers' command lines, for anyone to see.
    port = scheduler_port(scheduler, [process for process in cluster if process != scheduler])
    stranger = subprocess.run(
        [sys.executable, "-c", STRANGER, str(port)],
        check=False,
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert stranger.returncode == 0, stranger.stderr
    outcomes = json.loads(stranger.stdout)
    assert all(outcome.startswith("refused") for outcome in outcomes.values()), outcomes
    assert parallel.map(abs, [-3]) == [3]  # the kernel's own client still works


def their_tls_cluster(security):
    """A cluster of the user's own, in this process, that speaks TLS with their certificate."""
    import distributed

    return distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        protocol="tls",
        security=security,
        host="127.0.0.1",
        dashboard_address=None,
    )


def test_a_client_the_user_gives_is_used_as_it_is_and_left_open(session):
    """nbparallel adds nothing to a user's cluster: their Client (and its TLS security) runs the
    tasks, no cluster of nbparallel's starts, and shutting nbparallel down leaves it open."""
    import distributed
    from distributed.security import Security

    theirs = Security.temporary()
    with (
        their_tls_cluster(theirs) as their_cluster,
        distributed.Client(their_cluster) as client,
    ):
        before = {child.pid for child in psutil.Process().children(recursive=True)}
        session.configure(backend="dask", address=client)
        assert session.map(lambda _: os.getpid(), range(2)) == [os.getpid()] * 2  # their threads
        assert {child.pid for child in psutil.Process().children(recursive=True)} == before
        session.shutdown()
        assert client.status == "running" and client.security is theirs
        assert client.submit(abs, -4).result(timeout=10) == 4


def test_an_address_the_user_gives_connects_with_their_own_dask_security(session):
    """A string address is dask's to resolve: the user's configured certificate opens their TLS
    cluster, as it would for their own `distributed.Client(address)`."""
    import dask
    from distributed.security import Security

    theirs = Security.temporary()
    with (
        their_tls_cluster(theirs) as their_cluster,
        dask.config.set(
            {
                "distributed.comm.require-encryption": True,
                "distributed.comm.tls.ca-file": theirs.tls_ca_file,
                "distributed.comm.tls.client.cert": theirs.tls_client_cert,
                "distributed.comm.tls.client.key": theirs.tls_client_key,
            }
        ),
    ):
        session.configure(backend="dask", address=their_cluster.scheduler_address)
        assert session.map(lambda _: os.getpid(), range(2)) == [os.getpid()] * 2
        session.shutdown()


# Stand-ins for the cluster's processes: one that never answers (but follows its lifeline, as
# the real ones do), one that dies before it joins.
SILENT_SCHEDULER = "import os, sys; os.read(int(sys.argv[2]), 1)"
DYING_WORKER = (
    "import os, sys\n"
    "if sys.argv[1] == 'worker':\n    os._exit(3)\n"
    "from nbparallel.backends.dask_cluster import main; main()"
)


def test_a_scheduler_that_never_says_its_address_fails_the_call_at_the_deadline(
    monkeypatch, session
):
    monkeypatch.setattr(dask_cluster, "_BOOT", SILENT_SCHEDULER)
    monkeypatch.setattr(dask_cluster, "START_SECONDS", 1.0)
    started = time.monotonic()
    silent = r"the dask scheduler .* did not print the address it listens on within 1 s"
    with pytest.raises(ClusterStartError, match=silent):
        session.map(abs, [1], backend="dask")
    assert time.monotonic() - started < 10


def test_a_worker_that_exits_before_it_joins_fails_the_call_and_says_its_exit_code(
    monkeypatch, session
):
    monkeypatch.setattr(dask_cluster, "_BOOT", DYING_WORKER)
    exited = r"the dask worker .* exited \(code 3\) before it could join the scheduler at tls://"
    with pytest.raises(ClusterStartError, match=exited):
        session.map(abs, [1], backend="dask")


def test_dask_insights_come_from_the_schedulers_task_stream_and_name_the_dask_workers(
    session, tmp_path
):
    """On a user's dask cluster (two workers in one process: one pid), a map without insights
    adds no task stream plugin to the scheduler; one with insights names the dask worker of
    each row and chunk, and the time dask spent moving large items between its workers comes
    from the scheduler's record: our own code, which starts timing once the task runs, never
    saw it."""
    import dask
    import distributed

    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0"
        ) as their_cluster,  # in this process (inproc://); only its HTTP server listens, on loopback
        distributed.Client(their_cluster) as client,
    ):  # fmt: skip
        session.configure(backend="dask", address=client, workers=2)
        assert session.map(len, [b"ab", b"c"]) == [2, 1]
        assert "task-stream" not in their_cluster.scheduler.plugins
        first, second = sorted(client.scheduler_info(n_workers=-1)["workers"])
        big = os.urandom(2**21)
        # Large chunks are scattered round robin, so half of them start out on the second
        # worker; pinned to the first, it has to fetch those from its peer.
        with dask.annotate(workers=[first]), distributed.get_task_stream(client) as stream:
            assert session.map(len, [big] * 4, chunksize=1, insights=True) == [len(big)] * 4
        assert "task-stream" in their_cluster.scheduler.plugins
        record = session.insights()
        session.shutdown()

    rows = {row.name: row for row in record.workers}
    assert set(rows) == {first, second}, record
    assert (rows[first].tasks, rows[second].tasks) == (4, 0), record
    assert {span.worker_name for span in record.chunks} == {first}
    assert {item.worker_name for item in record.slowest} == {first}  # as the rows name it
    assert f"{first} " in repr(record) and f"{second} " in repr(record)
    # The scheduler's record of each task, as dask's own get_task_stream reads it.
    steps = sorted(
        (step["action"], step["start"], step["stop"]) for task in stream.data
        for step in task["startstops"]
    )  # fmt: skip
    assert sorted(step for cost in record.costs for step in cost.cluster_steps) == steps
    fetched = [cost for cost in record.costs if cost.cluster_transfer_seconds > 0]
    assert len(fetched) >= 2, record.costs  # the two chunks scattered to the second worker
    ours = sum(cost.load_seconds + cost.dump_seconds for cost in record.costs)
    dasks = sum(cost.cluster_transfer_seconds for cost in record.costs)
    assert rows[first].transfer == pytest.approx(ours + dasks)
    # The Chrome trace: the dask worker's track, with dask's transfers as slices of their own.
    record.to_chrome_trace(tmp_path / "trace.json")
    events = json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    (track,) = {
        e["pid"] for e in events if e["ph"] == "M" and e["args"]["name"] == f"worker {first}"
    }
    moves = [e for e in events if e.get("cat") == "dask"]
    assert {e["name"] for e in moves} == {"dask transfer"} and {e["pid"] for e in moves} == {track}
    assert len(moves) == len(fetched)
