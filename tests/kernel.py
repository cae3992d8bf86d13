"""A real IPython kernel started through jupyter_client, as JupyterLab starts one."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager


@dataclass
class Reply:
    status: str
    stdout: str = ""
    stderr: str = ""
    results: list[str] = field(default_factory=list)  # text/plain of execute_result/display_data
    ename: str = ""
    evalue: str = ""
    payload_text: str = ""


class Kernel:
    """A kernel of this Python environment, with helpers to run code and find its workers."""

    def __init__(self, directory: Path) -> None:
        spec_dir = directory / "kernels" / "nbparallel-test"
        spec_dir.mkdir(parents=True)
        spec_dir.joinpath("kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "nbparallel test", "language": "python",
        }))
        specs = KernelSpecManager(kernel_dirs=[str(directory / "kernels")])
        self.manager = KernelManager(kernel_name="nbparallel-test", kernel_spec_manager=specs)
        self.manager.start_kernel(cwd=str(directory))
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)

    @property
    def pid(self) -> int:
        return self.manager.provisioner.process.pid  # type: ignore[union-attr]

    def workers(self) -> set[tuple[int, float]]:
        """The kernel's worker processes, as (pid, creation time), seen from outside."""
        found = set()
        try:
            kernel_children = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            return found
        for child in kernel_children:
            try:
                if child.status() != psutil.STATUS_ZOMBIE and "nbparallel.worker" in " ".join(child.cmdline()):
                    found.add((child.pid, child.create_time()))
            except psutil.Error:
                continue
        return found

    def send(self, code: str) -> str:
        """Start running `code` without waiting; returns the message id."""
        return self.client.execute(code)

    def reply(self, msg_id: str, timeout: float = 60) -> Reply:
        """Collect the output of the request `msg_id` until the kernel is idle again."""
        result = Reply(status="")
        deadline = time.monotonic() + timeout
        while True:
            msg = self.client.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                if content["name"] == "stdout":
                    result.stdout += content["text"]
                else:
                    result.stderr += content["text"]
            elif kind in ("execute_result", "display_data"):
                result.results.append(content["data"].get("text/plain", ""))
            elif kind == "error":
                result.ename, result.evalue = content["ename"], content["evalue"]
            elif kind == "status" and content["execution_state"] == "idle":
                break
        shell = self.client.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
        while shell["parent_header"].get("msg_id") != msg_id:
            shell = self.client.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
        result.status = shell["content"]["status"]
        if result.status == "error" and not result.ename:  # UsageError: no error message on iopub
            result.ename = shell["content"].get("ename", "")
            result.evalue = shell["content"].get("evalue", "")
        for item in shell["content"].get("payload", []):
            result.payload_text += item.get("data", {}).get("text/plain", "")
        return result

    def run(self, code: str, timeout: float = 60) -> Reply:
        return self.reply(self.send(code), timeout)

    def ok(self, code: str, timeout: float = 60) -> Reply:
        """Run `code` and fail the test with the kernel's error if it raised."""
        reply = self.run(code, timeout)
        assert reply.status == "ok", f"{reply.ename}: {reply.evalue}\n{reply.stderr}"
        return reply

    def value(self, expression: str) -> Any:
        """Evaluate `expression` in the kernel; it must be JSON-serializable."""
        reply = self.ok(f"import json as _json; print(_json.dumps({expression}))")
        return json.loads(reply.stdout.strip().splitlines()[-1])

    def shutdown(self) -> None:
        self.client.stop_channels()
        if self.manager.is_alive():
            self.manager.shutdown_kernel(now=True)
        self.manager.cleanup_resources()
