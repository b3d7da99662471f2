"""Opening a page in headless Chromium (the Debian package) and reading what a person would see.

`ensure_chromium()` finds the browser or installs it with apt (as root); `render(path)` loads a file in
a fresh headless browser over the DevTools protocol (`--remote-debugging-pipe`: NUL-separated JSON on
file descriptors 3 and 4, no port, no network) and returns the screenshot, the state of every <img> and
every console error or uncaught exception.

    chromium = ensure_chromium()
    page = render(chromium, "report.html")
    assert not page.console_errors and all(img["ok"] for img in page.images)
"""
from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import List

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class BrowserUnavailable(RuntimeError):
    """No Chromium here and none could be installed: the message says how to install it."""


def find_chromium():
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def ensure_chromium(timeout: float = 900) -> str:
    """The path of a Chromium binary, installing the Debian package `chromium` with apt where it is missing
    (root only: the test must not be skipped, so anything else fails with what to run)."""
    path = find_chromium()
    if path:
        return path
    if shutil.which("apt-get") is None:
        raise BrowserUnavailable("Chromium is not installed and there is no apt-get here: install Chromium "
                                 "(a binary named one of " + ", ".join(CANDIDATES) + ") and rerun")
    if os.geteuid() != 0:
        raise BrowserUnavailable("Chromium is not installed and installing it needs root: run "
                                 "`sudo apt-get install -y chromium` and rerun")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
    done = subprocess.run(install, capture_output=True, text=True, env=env, timeout=timeout)
    if done.returncode != 0:   # stale package lists: refresh once and retry
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True, env=env, timeout=timeout)
        done = subprocess.run(install, capture_output=True, text=True, env=env, timeout=timeout)
    path = find_chromium()
    if done.returncode != 0 or path is None:
        raise BrowserUnavailable(f"`{' '.join(install)}` failed (exit {done.returncode}): "
                                 f"{done.stderr.strip()[-800:]}")
    return path


@dataclass
class Page:
    screenshot: "object"                     # a PIL image of the whole page
    images: List[dict] = field(default_factory=list)   # per <img>: alt, ok, natural width and height
    console_errors: List[str] = field(default_factory=list)
    title: str = ""
    text: str = ""                           # the page's visible text (document.body.innerText)


class _Pipe:
    """The DevTools protocol over the two pipes Chromium opens with --remote-debugging-pipe."""

    def __init__(self, proc: subprocess.Popen, to_browser: int, from_browser: int):
        self.proc, self.w, self.r = proc, to_browser, from_browser
        self.next_id, self.buffer, self.events = 0, b"", []

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self.buffer:
            ready, _, _ = select.select([self.r], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self.r, 1 << 16)
            if not chunk:
                raise RuntimeError(f"Chromium closed the DevTools pipe (exit {self.proc.poll()})")
            self.buffer += chunk
        raw, _, self.buffer = self.buffer.partition(b"\0")
        return json.loads(raw)

    def call(self, method: str, session: str = None, timeout: float = 20, **params) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)   # an event (or a late reply) arriving meanwhile

    def wait_event(self, method: str, timeout: float = 20) -> dict:
        deadline = time.monotonic() + timeout
        for e in self.events:
            if e.get("method") == method:
                return e
        while True:
            e = self._read_message(deadline)
            self.events.append(e)
            if e.get("method") == method:
                return e


def _console_errors(events) -> List[str]:
    errors = []
    for e in events:
        method, params = e.get("method"), e.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = params.get("exceptionDetails", {})
            errors.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append("console.error: " + " ".join(str(a.get("value", a.get("description")))
                                                       for a in params.get("args", [])))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            errors.append(f"log: {entry.get('text')} ({entry.get('url', '')})")
    return errors


IMAGES_JS = ("JSON.stringify([...document.images].map(i => ({alt: i.alt, ok: i.complete && i.naturalWidth > 0, "
             "width: i.naturalWidth, height: i.naturalHeight})))")


def render(chromium: str, path: str, width: int = 1200, height: int = 900, timeout: float = 30) -> Page:
    """Load `path` (a local file) in a fresh headless Chromium and read the page back."""
    from PIL import Image

    profile = tempfile.mkdtemp(prefix="fxcompress-chromium-")
    to_r, to_w = os.pipe()       # we write commands, the browser reads them on its fd 3
    from_r, from_w = os.pipe()   # the browser writes replies on its fd 4
    cmd = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--remote-debugging-pipe", f"--user-data-dir={profile}", "--no-first-run", "--no-default-browser-check",
           "--disable-extensions", "--disable-background-networking", "--disable-component-update",
           f"--window-size={width},{height}", "about:blank"]

    def wire_fds():   # in the child: our pipe ends become fds 3 and 4 (moved above 10 first: no clobbering)
        high_r, high_w = fcntl.fcntl(to_r, fcntl.F_DUPFD, 10), fcntl.fcntl(from_w, fcntl.F_DUPFD, 10)
        os.dup2(high_r, 3)
        os.dup2(high_w, 4)
        os.close(high_r)
        os.close(high_w)

    # close_fds=False: a sweep after preexec_fn would close 3 and 4, and pass_fds=(3, 4) fails (EBADF) when
    # the parent's own 3 and 4 are files a library opened (matplotlib's fonts); Python's descriptors are
    # close-on-exec anyway, while dup2's copies are inheritable
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            close_fds=False, preexec_fn=wire_fds)
    os.close(to_r)
    os.close(from_w)
    pipe = _Pipe(proc, to_w, from_r)
    try:
        targets = pipe.call("Target.getTargets", timeout=timeout)["targetInfos"]
        page_id = next(t["targetId"] for t in targets if t["type"] == "page")
        session = pipe.call("Target.attachToTarget", targetId=page_id, flatten=True)["sessionId"]
        for domain in ("Page.enable", "Runtime.enable", "Log.enable"):
            pipe.call(domain, session)
        pipe.call("Page.navigate", session, url="file://" + os.path.abspath(path))
        pipe.wait_event("Page.loadEventFired", timeout=timeout)
        images = json.loads(pipe.call("Runtime.evaluate", session, expression=IMAGES_JS,
                                      returnByValue=True)["result"]["value"])
        title, text = (pipe.call("Runtime.evaluate", session, expression=e, returnByValue=True)["result"]["value"]
                       for e in ("document.title", "document.body.innerText"))
        shot = pipe.call("Page.captureScreenshot", session, timeout=timeout, format="png",
                         captureBeyondViewport=True)["data"]
        errors = _console_errors(pipe.events)
        try:
            pipe.call("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError):
            pass   # the browser may close the pipe before answering
        return Page(Image.open(io.BytesIO(base64.b64decode(shot))).convert("RGB"), images, errors, title, text)
    finally:
        os.close(to_w)
        os.close(from_r)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
