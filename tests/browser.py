"""A real browser on a real JupyterLab: Debian's Chromium driven by Playwright.

Facts this relies on (from a working trial on this kind of machine): Playwright must be given the
system's Chromium (`executable_path`; `playwright install` downloads a browser and fails here);
JupyterLab needs its own config, runtime and settings folders, no token, a fixed port, and a
kernel that is idle before "Run All" is clicked.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
_BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_or_install_chromium() -> tuple[str | None, str]:
    """The path of a Chromium, installing Debian's package if we may; else None and why not."""
    found = next((path for name in _BROWSERS if (path := shutil.which(name))), None)
    if found:
        return found, ""
    if not shutil.which("apt-get"):
        return (
            None,
            "no Chromium found and no apt-get to install it (install chromium to run this test)",
        )
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        return (
            None,
            "no Chromium found; installing it needs root (run: sudo apt-get install chromium)",
        )
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE, "timeout": 600}
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    update = subprocess.run(["apt-get", "update", "-q"], env=env, **quiet)  # type: ignore[call-overload]
    install = subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], env=env, **quiet)  # type: ignore[call-overload]
    found = shutil.which("chromium")
    if found:
        return found, ""
    return (
        None,
        f"installing Debian's chromium failed: {(update.stderr + install.stderr).decode()[-500:]}",
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class JupyterLab:
    """A JupyterLab server on 127.0.0.1 with its own settings, serving `root`."""

    def __init__(self, root: Path, home: Path) -> None:
        self.port = free_port()
        settings = home / "lab-settings"
        notification = (
            settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
        )
        notification.parent.mkdir(parents=True)
        notification.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
        env = {
            **os.environ,
            "JUPYTER_CONFIG_DIR": str(home / "config"),
            "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
            "JUPYTERLAB_SETTINGS_DIR": str(settings),
            "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
        }
        self.log = (home / "jupyterlab.log").open("w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyterlab",
                "--no-browser",
                "--allow-root",
                "--ip=127.0.0.1",
                f"--port={self.port}",
                "--port-retries=0",
                "--IdentityProvider.token=",
                f"--ServerApp.root_dir={root}",
            ],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self._wait_until_up(timeout=60)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _wait_until_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"JupyterLab exited with {self.process.returncode}; see {self.log.name}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/api/status", timeout=2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"JupyterLab did not answer within {timeout} s; see {self.log.name}"
                    ) from None
                time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM (it shuts its kernels down), then SIGKILL if it is still there after 20 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
