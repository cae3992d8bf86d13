"""A real IPython kernel started through jupyter_client, as JupyterLab starts one."""

from __future__ import annotations

import json
import queue
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
    widget_views: list[str] = field(default_factory=list)  # model ids of widgets displayed
    # Every output in the order the frontend shows them: ("stdout" or "stderr", text), or
    # ("display", its text/plain) for execute_result and display_data.
    outputs: list[tuple[str, str]] = field(default_factory=list)


class Kernel:
    """A kernel of this Python environment, with helpers to run code and find its workers.

    Like a frontend, it keeps the state of every widget the kernel creates (`widgets`, by model
    id), from all messages it reads, whatever cell they belong to.
    """

    def __init__(self, directory: Path) -> None:
        spec_dir = directory / "kernels" / "nbparallel-test"
        spec_dir.mkdir(parents=True)
        spec_dir.joinpath("kernel.json").write_text(
            json.dumps(
                {
                    "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                    "display_name": "nbparallel test",
                    "language": "python",
                }
            )
        )
        specs = KernelSpecManager(kernel_dirs=[str(directory / "kernels")])
        self.manager = KernelManager(kernel_name="nbparallel-test", kernel_spec_manager=specs)
        self.manager.start_kernel(cwd=str(directory))
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)
        self.widgets: dict[str, dict[str, Any]] = {}
        self.widget_updates = 0  # comm messages that changed a widget's state

    def _observe(self, msg: dict[str, Any]) -> None:
        content = msg["content"]
        if msg["msg_type"] == "comm_open" and content.get("target_name") == "jupyter.widget":
            self.widgets[content["comm_id"]] = dict(content["data"]["state"])
        elif msg["msg_type"] == "comm_msg" and content["comm_id"] in self.widgets:
            state = content["data"].get("state")
            if content["data"].get("method") in ("update", "echo_update") and state:
                self.widgets[content["comm_id"]].update(state)
                self.widget_updates += 1

    def widget_tree(self, model_id: str) -> list[dict[str, Any]]:
        """The states of a widget and of all widgets inside it, depth first."""
        state = self.widgets[model_id]
        found = [state]
        for child in state.get("children") or []:
            found.extend(self.widget_tree(child.removeprefix("IPY_MODEL_")))
        return found

    def read_until(self, condition: Any, timeout: float = 30) -> Any:
        """Read the kernel's messages (keeping widget state) until `condition()` is truthy."""
        deadline = time.monotonic() + timeout
        while not (found := condition()):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"condition not met within {timeout} s: {condition}"
            try:
                self._observe(self.client.get_iopub_msg(timeout=min(remaining, 0.5)))
            except queue.Empty:
                continue
        return found

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
                if child.status() != psutil.STATUS_ZOMBIE and "nbparallel.worker" in " ".join(
                    child.cmdline()
                ):
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
            self._observe(msg)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                result.outputs.append((content["name"], content["text"]))
                if content["name"] == "stdout":
                    result.stdout += content["text"]
                else:
                    result.stderr += content["text"]
            elif kind in ("execute_result", "display_data"):
                result.results.append(content["data"].get("text/plain", ""))
                result.outputs.append(("display", result.results[-1]))
                view = content["data"].get("application/vnd.jupyter.widget-view+json")
                if view:
                    result.widget_views.append(view["model_id"])
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
