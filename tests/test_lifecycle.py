"""The worker record cannot be turned against us: the sweep kills only what our own private
folder and our own records list, and only our own processes; records are never written through a
link. The attacks by another local user run as root, with a throwaway user as the attacker."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import warnings
from pathlib import Path

import pytest

from nbparallel import lifecycle
from nbparallel.errors import UnsafeFolderWarning

from .conftest import ROOT

DEAD_OWNER = (1, 0.0)  # pid 1 with another creation time: an owner that is gone


@pytest.fixture
def our_process():
    """A process of ours that a planted record could name; killed after the test."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process
    process.kill()
    process.wait(10)


@pytest.fixture
def private_folder(tmp_path, monkeypatch) -> Path:
    """A record folder of our own (0700), used instead of the session's for this test; the
    record this process writes lists only this test's pools, not the session pool's workers."""
    folder = tmp_path / "records"
    folder.mkdir(mode=0o700)
    monkeypatch.setenv("NBPARALLEL_STATE_DIR", str(folder))
    monkeypatch.setattr(lifecycle, "_workers_by_pool", {})
    return folder


def plant_record(path: Path, workers: list[tuple[int, float]]) -> None:
    path.write_text(json.dumps({"owner": DEAD_OWNER, "workers": workers}))


def our_record_name() -> str:
    pid, created = lifecycle.identify(os.getpid())
    return f"{pid}-{created:.3f}.json"


# --- where the record lives, and how it is made ------------------------------------------


def test_the_record_lives_in_the_runtime_folder_only_when_that_is_private(tmp_path, monkeypatch):
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.delenv("NBPARALLEL_STATE_DIR")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert lifecycle.state_dir() == runtime / "nbparallel"
    runtime.chmod(0o755)  # not a runtime folder by its own rule: the temp folder serves instead
    assert lifecycle.state_dir() == Path(tempfile.gettempdir()) / f"nbparallel-{os.getuid()}"


def test_a_new_record_folder_and_its_record_are_private_whatever_the_umask(
    private_folder, monkeypatch
):
    folder = private_folder / "made" / "records"
    monkeypatch.setenv("NBPARALLEL_STATE_DIR", str(folder))
    pool = object()
    previous = os.umask(0)
    try:
        lifecycle.record_workers(pool, [lifecycle.identify(os.getpid())])
    finally:
        os.umask(previous)
    try:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert stat.S_IMODE((folder / our_record_name()).stat().st_mode) == 0o600
    finally:
        lifecycle.record_workers(pool, [])
    assert os.listdir(folder) == []


# --- a folder or a record we cannot trust ----------------------------------------------


def test_a_folder_others_can_write_is_refused_once_with_a_warning_and_nothing_is_swept(
    private_folder, our_process
):
    plant_record(private_folder / "planted.json", [lifecycle.identify(our_process.pid)])
    private_folder.chmod(0o777)
    with pytest.warns(UnsafeFolderWarning, match=f"{private_folder}.*changed by other users"):
        assert lifecycle.reap_orphans() == 0
    with warnings.catch_warnings(record=True) as later:
        warnings.simplefilter("always")
        lifecycle.record_workers(object(), [lifecycle.identify(os.getpid())])
        lifecycle.reap_orphans()
    assert later == []  # said once
    assert our_process.poll() is None
    assert os.listdir(private_folder) == ["planted.json"]  # and nothing written there


def test_a_symlinked_folder_is_refused(private_folder, tmp_path, monkeypatch, our_process):
    plant_record(private_folder / "planted.json", [lifecycle.identify(our_process.pid)])
    link = tmp_path / "link"
    link.symlink_to(private_folder)
    monkeypatch.setenv("NBPARALLEL_STATE_DIR", str(link))
    with pytest.warns(UnsafeFolderWarning, match=f"{link}.*symbolic link"):
        assert lifecycle.reap_orphans() == 0
    lifecycle.record_workers(object(), [lifecycle.identify(os.getpid())])
    assert our_process.poll() is None
    assert os.listdir(private_folder) == ["planted.json"]


def test_a_symlink_in_our_folder_is_not_followed_to_a_record_elsewhere(
    private_folder, tmp_path, our_process
):
    elsewhere = tmp_path / "elsewhere.json"
    plant_record(elsewhere, [lifecycle.identify(our_process.pid)])
    (private_folder / "planted.json").symlink_to(elsewhere)
    assert lifecycle.reap_orphans() == 0
    assert our_process.poll() is None


def test_a_record_is_never_written_through_a_link_at_its_temporary_name(
    private_folder, tmp_path, monkeypatch
):
    """Old records were written to a name anyone could predict; the name is now random (fixed
    here to plant a link on it) and the file created exclusively, so the link makes it fail."""
    precious = tmp_path / "precious"
    precious.write_text("precious")
    record = our_record_name()
    monkeypatch.setattr(secrets, "token_hex", lambda nbytes=None: "f" * 16)
    for name in (record.replace(".json", ".tmp"), f".{record}.{os.getpid()}.{'f' * 16}.tmp"):
        (private_folder / name).symlink_to(precious)
    pool = object()
    refused: OSError | None = None
    try:
        lifecycle.record_workers(pool, [lifecycle.identify(os.getpid())])
    except FileExistsError as error:
        refused = error
    finally:
        lifecycle.record_workers(pool, [])
    assert precious.read_text() == "precious"
    assert refused is not None  # the name is taken: the file is never opened, so nothing follows


# --- attacks by another local user (as root) -------------------------------------------------


@pytest.fixture(scope="module")
def other_user():
    """A throwaway local user (name, uid, gid), removed after this module's tests."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("needs root: it creates a second user to play the attacker")
    if not shutil.which("useradd"):
        pytest.skip("needs useradd to create a second user")
    import pwd

    name = f"nbpx{secrets.token_hex(4)}"
    subprocess.run(
        ["useradd", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
        timeout=30,
    )
    try:
        entry = pwd.getpwnam(name)
        yield name, entry.pw_uid, entry.pw_gid
    finally:
        subprocess.run(["userdel", "-r", name], capture_output=True, timeout=30)
        with pytest.raises(KeyError):
            pwd.getpwnam(name)


def run_as(user, code: str) -> None:
    """Run `code` as `user`. The interpreter starts as root and then drops every privilege: the
    venv's Python lives where other users cannot read it."""
    _, uid, gid = user
    drop = (
        f"import json, os\nos.setgroups([])\nos.setresgid({gid}, {gid}, {gid})\n"
        f"os.setresuid({uid}, {uid}, {uid})\nassert os.geteuid() == {uid}\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", drop + textwrap.dedent(code)],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture
def shared_temp():
    """A folder every user may write in, as /tmp is (1777): our temp folder for the victim."""
    folder = Path(tempfile.mkdtemp(prefix="nbparallel-test-shared-"))
    folder.chmod(0o1777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def start_victim(code: str, temp: Path) -> subprocess.Popen[str]:
    """nbparallel in a fresh interpreter that finds its record folder the default way, in `temp`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("NBPARALLEL_STATE_DIR", "XDG_RUNTIME_DIR")
    }
    env.update(TMPDIR=str(temp), PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.mark.parametrize("mode", [0o777, 0o755], ids=["mode-777", "mode-755"])
def test_a_folder_another_user_made_first_is_refused_and_our_process_survives(
    other_user, shared_temp, our_process, mode
):
    folder = shared_temp / f"nbparallel-{os.getuid()}"
    record = {"owner": DEAD_OWNER, "workers": [lifecycle.identify(our_process.pid)]}
    run_as(
        other_user,
        f"""
        os.mkdir({str(folder)!r})
        os.chmod({str(folder)!r}, {mode})
        with open({str(folder / "planted.json")!r}, "w") as file:
            json.dump({record!r}, file)
        """,
    )
    victim = start_victim(
        "from nbparallel import lifecycle\nprint(lifecycle.reap_orphans())", shared_temp
    )
    out, err = victim.communicate(timeout=30)
    assert victim.returncode == 0, err
    assert out.strip() == "0"
    assert our_process.poll() is None
    assert "UnsafeFolderWarning" in err and str(folder) in err
    assert f"belongs to user id {other_user[1]}" in err


def test_a_link_another_user_planted_at_our_temporary_file_is_not_written_through(
    other_user, shared_temp, tmp_path
):
    precious = tmp_path / "precious"  # a file of ours (say ~/.bashrc) the attacker wants changed
    precious.write_text("precious")
    folder = shared_temp / f"nbparallel-{os.getuid()}"
    victim = start_victim(
        """
        import os, sys
        from nbparallel import lifecycle
        sys.stdin.readline()  # the attacker plants the link meanwhile
        lifecycle.record_workers(object(), [lifecycle.identify(os.getpid())])
        """,
        shared_temp,
    )
    try:
        pid, created = lifecycle.identify(victim.pid)
        run_as(
            other_user,
            f"""
            os.mkdir({str(folder)!r})
            os.chmod({str(folder)!r}, 0o777)
            for name in ({f"{pid}-{created:.3f}.tmp"!r}, {f"{pid}-{created:.3f}.json"!r}):
                os.symlink({str(precious)!r}, os.path.join({str(folder)!r}, name))
            """,
        )
        out, err = victim.communicate("go\n", timeout=30)
    finally:
        victim.kill()
        victim.wait(10)
    assert victim.returncode == 0, err
    assert precious.read_text() == "precious"
    assert "UnsafeFolderWarning" in err and str(folder) in err


def test_a_record_another_user_owns_is_never_trusted_even_in_our_folder(
    other_user, private_folder, our_process
):
    planted = private_folder / "planted.json"
    plant_record(planted, [lifecycle.identify(our_process.pid)])
    os.chown(planted, other_user[1], other_user[2])
    assert lifecycle.reap_orphans() == 0
    assert our_process.poll() is None


def test_the_sweep_never_kills_another_users_process_even_when_our_record_lists_it(
    other_user, private_folder
):
    theirs = subprocess.Popen(
        ["sleep", "120"], user=other_user[1], group=other_user[2], extra_groups=[], cwd="/"
    )
    try:
        plant_record(private_folder / "ours.json", [lifecycle.identify(theirs.pid)])
        assert lifecycle.reap_orphans() == 0
        assert theirs.poll() is None
        assert not (private_folder / "ours.json").exists()  # the record itself was handled
    finally:
        theirs.kill()
        theirs.wait(10)
