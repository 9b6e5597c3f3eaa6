"""Table 1 as a reader of the Snakemake report sees it: a report built by the real workflow
(rule ``tables`` on synthetic metrics), opened in headless Chromium, the Tables entry clicked,
and Table 1's numbers read from the rendered page.

The report is one self-contained HTML file rendered by JavaScript; an ``.html`` result is
shown in an ``<iframe>`` whose ``src`` is a ``data:`` URL. Chromium is driven over the
DevTools protocol on a pipe (``--remote-debugging-pipe``: no port, no extra package), and the
text is the iframe's ``document.body.innerText`` (what is laid out on screen, not the source).
Skipped where no Chromium is installed (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = next(
    (p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p),
    None,
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium (Debian: apt-get install chromium chromium-driver)"
)
DATASETS = ("demo-openi", "demo-mimic", "demo-ccrcc")  # config/smoke.yaml's


class Chromium:
    """Headless Chromium spoken to over the DevTools protocol on fds 3 / 4."""

    def __init__(self, exe: str) -> None:
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        to_child, from_child = os.pipe(), os.pipe()
        # park the child's ends above fd 4, then make them its fds 3 (commands) and 4 (replies)
        child_in = fcntl.fcntl(to_child[0], fcntl.F_DUPFD, 10)
        child_out = fcntl.fcntl(from_child[1], fcntl.F_DUPFD, 10)

        def wire() -> None:
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        args = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", f"--user-data-dir={self.profile}", "--remote-debugging-pipe",
                "--window-size=1400,1000", "about:blank"]  # fmt: skip
        self.proc = subprocess.Popen(args, close_fds=False, preexec_fn=wire,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        for fd in (to_child[0], from_child[1], child_in, child_out):
            os.close(fd)
        self.w = os.fdopen(to_child[1], "wb", buffering=0)
        self.r = os.fdopen(from_child[0], "rb", buffering=0)
        self.buf, self.next_id = b"", 0

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.w.write(json.dumps(msg).encode() + b"\0")
        while True:  # skip events until our reply
            while b"\0" not in self.buf:
                chunk = self.r.read(1 << 16)
                if not chunk:
                    raise RuntimeError("Chromium closed the DevTools pipe")
                self.buf += chunk
            raw, self.buf = self.buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def close(self) -> None:
        try:
            self.send("Browser.close")
            self.proc.wait(10)
        except Exception:  # noqa: BLE001 - a browser that is already gone is fine
            self.proc.kill()
            self.proc.wait(10)
        shutil.rmtree(self.profile, ignore_errors=True)


class Page:
    def __init__(self, browser: Chromium) -> None:
        self.b = browser
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.s = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        browser.send("Page.enable", session=self.s)

    def goto(self, url: str) -> None:
        self.b.send("Page.navigate", {"url": url}, session=self.s)

    def js(self, expr: str, context: int | None = None):
        params = {"expression": expr, "returnByValue": True}
        if context is not None:
            params["contextId"] = context
        got = self.b.send("Runtime.evaluate", params, session=self.s)
        if "exceptionDetails" in got:
            raise RuntimeError(got["exceptionDetails"])
        return got["result"].get("value")

    def wait_for(self, expr: str, timeout: float = 20.0, context: int | None = None):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                value = self.js(expr, context)
            except RuntimeError:
                value = None
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {expr}")

    def child_frames(self) -> list[dict]:
        tree = self.b.send("Page.getFrameTree", session=self.s)["frameTree"]
        return [c["frame"] for c in tree.get("childFrames", [])]

    def frame_context(self, frame_id: str) -> int:
        """A JavaScript context inside the (cross-origin, data: URL) iframe."""
        return self.b.send("Page.createIsolatedWorld", {"frameId": frame_id, "worldName": "test"},
                           session=self.s)["executionContextId"]  # fmt: skip

    def screenshot(self, path: Path) -> None:
        data = self.b.send("Page.captureScreenshot", session=self.s)["data"]
        path.write_bytes(base64.b64decode(data))


def _metrics(dataset: str, values: dict[str, list[float]]) -> pd.DataFrame:
    rows = []
    for method, seeds in values.items():
        for seed, v in enumerate(seeds):
            for k, metric in enumerate(("auroc", "auprc", "macro_f1", "accuracy")):
                rows.append({"dataset": dataset, "method": method, "protocol": "full",
                             "seed": seed, "split": "test", "task": "macro", "metric": metric,
                             "value": v - 0.01 * k})  # fmt: skip
    return pd.DataFrame(rows)


def _snakemake(workdir: Path, results: Path, *extra: str) -> None:
    cmd = [sys.executable, "-m", "snakemake", str(results / "tables" / "main.html"),
           "--snakefile", str(REPO / "Snakefile"), "--configfile", str(REPO / "config" / "smoke.yaml"),
           "--allowed-rules", "tables", "--cores", "1", *extra,
           "--config", f"results={results}"]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The Snakemake report of the rule ``tables`` run on synthetic metrics (the metrics
    tables stand in for the training runs: ``--allowed-rules tables``)."""
    work = tmp_path_factory.mktemp("report")
    results = work / "results"
    for k, ds in enumerate(DATASETS):
        vals = {"medmix": [0.83, 0.85], "concat": [0.71 + 0.01 * k, 0.74], "meanavg": [0.69, 0.7]}
        if ds == "demo-mimic":
            vals["ehr-large"] = [0.91, 0.93]  # a teacher reference above every fusion method
        (results / ds).mkdir(parents=True)
        _metrics(ds, vals).to_parquet(results / ds / "metrics.parquet")
    _snakemake(work, results)
    _snakemake(work, results, "--report", str(work / "report.html"))
    return work / "report.html", results


def test_report_shows_table1_inline(report: tuple[Path, Path]) -> None:
    path, results = report
    csv = pd.read_csv(results / "tables" / "main.csv")
    browser = Chromium(CHROMIUM)
    try:
        page = Page(browser)
        page.goto(path.as_uri())
        page.wait_for("typeof app !== 'undefined' && typeof results !== 'undefined'"
                      " && document.querySelector('#app').innerText.includes('Results')")  # fmt: skip
        assert any(k.endswith("tables/main.html") for k in page.js("Object.keys(results)"))
        # as a reader does: Results, (Tables), then the eye button of Table 1's entry
        page.js("[...document.querySelectorAll('a, button, li, div, span')].reverse()"
                ".find(e => e.innerText && e.innerText.trim() === 'Results').click()")  # fmt: skip
        page.wait_for("document.querySelector('#app').innerText.includes('tables/main.html')"
                      " || document.querySelector('#app').innerText.includes('Tables')")  # fmt: skip
        if not page.js("document.querySelector('#app').innerText.includes('tables/main.html')"):
            page.js("[...document.querySelectorAll('a, button, li, div, span')].reverse()"
                    ".find(e => e.innerText && e.innerText.trim() === 'Tables').click()")  # fmt: skip
        page.wait_for("[...document.querySelectorAll('tr')]"
                      ".some(t => t.innerText.includes('tables/main.html'))")  # fmt: skip
        page.js("[...document.querySelectorAll('tr')].find(t => t.innerText.includes("
                "'tables/main.html')).querySelector('a').click()")  # fmt: skip
        page.wait_for("document.querySelector('iframe') !== null")
        frames = [f for f in page.child_frames() if f["url"].startswith("data:text/html")]
        assert frames, page.child_frames()
        ctx = page.frame_context(frames[0]["id"])
        page.wait_for("document.body && document.body.innerText.includes('Table 1')", context=ctx)
        text = page.js("document.body.innerText", context=ctx)
        shown = page.js("(() => { const r = document.querySelector('table')"
                        ".getBoundingClientRect(); return [r.width, r.height]; })()",
                        context=ctx)  # fmt: skip
        bold = page.js("[...document.querySelectorAll('strong')].filter(s => "
                       "Number(getComputedStyle(s).fontWeight) >= 600).map(s => s.innerText)",
                       context=ctx)  # fmt: skip
        page.screenshot(path.with_suffix(".png"))
    finally:
        browser.close()
    assert shown[0] > 300 and shown[1] > 100, shown  # laid out, not an empty or hidden frame
    # every number of Table 1, as the CSV holds it, is on screen with three decimals
    for _, row in csv.iterrows():
        cell = f"{row['auroc_mean']:.3f} ± {row['auroc_std']:.3f}"
        assert cell in text, (row["dataset"], row["method"], cell)
    assert "0.840 ± 0.014" in text and "MedMIX" in text and "EHR-Large" in text
    assert "Teacher references (not ranked)" in text
    # MedMIX's means are the best of the compared methods; the higher teacher row is not bold
    assert bold.count("0.840 ± 0.014") == len(DATASETS), bold  # MedMIX's AUROC, per dataset
    assert len(bold) == 4 * len(DATASETS), bold  # one per dataset and metric
    teacher = [f"{0.92 - 0.01 * k:.3f} ± 0.014" for k in range(4)]
    assert all(t in text for t in teacher) and not set(teacher) & set(bold), bold
