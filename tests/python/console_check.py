"""Loads vigil's console in headless Chromium over the DevTools protocol and reports, as
JSON on stdout, what a user would see: every console message and uncaught exception,
failed or refused requests (CSP violations included), every URL requested and every
response received, the DOM's models, versions and
drift tables, how many times the page refreshed itself, and a full-page screenshot.

usage: console_check.py URL SCREENSHOT.png SECONDS_TO_WATCH
"""

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import websocket  # websocket-client

DOM_FACTS = r"""
JSON.stringify({
  models: [...document.querySelectorAll('article.model')].map(a => ({
    name: a.dataset.model,
    versions: [...a.querySelectorAll('tr[data-version]')].map(r => ({
      version: r.dataset.version,
      state: r.querySelector('td:nth-child(2) .tag').textContent,
      rate: (r.querySelector('td.rate') || {}).textContent || null,
      p50: (r.querySelector('td.p50') || {}).textContent || null,
      text: r.innerText,
    })),
  })),
  drift: [...document.querySelectorAll('article.drift')].map(a => ({
    model: a.dataset.model,
    version: a.dataset.version,
    status: a.querySelector('h3 .tag').textContent,
    timeline_bars: a.querySelectorAll('svg.timeline rect.bar').length,
    features: [...a.querySelectorAll(':scope > table.features tr[data-feature]')].map(r => ({
      name: r.dataset.feature,
      drifted: r.dataset.drifted === 'true',
      histogram_bars: r.querySelectorAll('svg.hist rect').length,
    })),
  })),
  events: [...document.querySelectorAll('tr[data-event]')].map(r => r.innerText),
  openapi_link: !!document.querySelector('a[href="/openapi.json"]'),
  refreshes: Number(document.body.dataset.refreshes || 0),
  refresh_text: document.getElementById('refresh').textContent,
  body_text: document.body.innerText,
})
"""


class Browser:
    def __init__(self):
        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        if not exe:
            raise SystemExit("chromium is not installed (scripts/setup-test-deps.sh installs it)")
        self.profile = tempfile.mkdtemp(prefix="vigil-chromium-")
        self.proc = subprocess.Popen(
            [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars",
             "--remote-debugging-port=0", f"--user-data-dir={self.profile}",
             "--window-size=1400,1000", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.time() + 60
        while not (os.path.exists(port_file) and open(port_file).read().strip()):
            if time.time() > deadline or self.proc.poll() is not None:
                raise SystemExit("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(open(port_file).read().split()[0])
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], suppress_origin=True)
        self.next_id = 0
        self.events = []

    def call(self, method, **params):
        self.next_id += 1
        me = self.next_id
        self.ws.send(json.dumps({"id": me, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == me:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def pump(self, seconds):
        """Collects events for `seconds`."""
        end = time.time() + seconds
        while time.time() < end:
            self.ws.settimeout(max(0.05, end - time.time()))
            try:
                self.events.append(json.loads(self.ws.recv()))
            except websocket.WebSocketTimeoutException:
                pass
        self.ws.settimeout(None)

    def wait_for(self, method, seconds):
        end = time.time() + seconds
        while time.time() < end:
            if any(e.get("method") == method for e in self.events):
                return
            self.pump(0.1)
        raise SystemExit(f"no {method} within {seconds} s")

    def close(self):
        try:
            self.ws.close()
        finally:
            self.proc.kill()
            self.proc.wait()
            shutil.rmtree(self.profile, ignore_errors=True)


def problems(events):
    """Everything a user's DevTools console would show as an error or warning."""
    out = []
    for e in events:
        m, p = e.get("method"), e.get("params", {})
        if m == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            out.append("exception: " + d.get("exception", {}).get("description", d.get("text", "")))
        elif m == "Runtime.consoleAPICalled" and p["type"] in ("error", "warning", "assert"):
            out.append(f"console.{p['type']}: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
        elif m == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
            out.append(f"log {p['entry']['level']}: {p['entry']['text']} {p['entry'].get('url', '')}")
        elif m == "Network.loadingFailed":
            out.append(f"request failed: {p.get('errorText')} {p.get('blockedReason', '')}")
        elif m == "Network.responseReceived" and p["response"]["status"] >= 400:
            out.append(f"HTTP {p['response']['status']}: {p['response']['url']}")
    return out


def main():
    url, shot, watch = sys.argv[1], sys.argv[2], float(sys.argv[3])
    b = Browser()
    try:
        for domain in ("Page", "Runtime", "Log", "Network"):
            b.call(f"{domain}.enable")
        b.call("Page.navigate", url=url)
        b.wait_for("Page.loadEventFired", 30)
        # Watch the page refresh itself twice (every 5 s), `watch` seconds at most: the
        # refresh count is the page's own state, so a slow machine waits longer instead
        # of failing after a fixed time.
        end = time.time() + watch
        while time.time() < end:
            b.pump(0.5)
            seen = b.call("Runtime.evaluate", expression="Number(document.body.dataset.refreshes || 0)",
                          returnByValue=True)["result"].get("value", 0)
            if seen >= 2:
                break
        facts = json.loads(b.call("Runtime.evaluate", expression=DOM_FACTS, returnByValue=True)["result"]["value"])
        metrics = b.call("Page.getLayoutMetrics")
        height = int(min(metrics["cssContentSize"]["height"], 6000))
        b.call("Emulation.setDeviceMetricsOverride", width=1400, height=height, deviceScaleFactor=1, mobile=False)
        b.pump(0.5)
        png = b.call("Page.captureScreenshot", format="png")["data"]
        with open(shot, "wb") as f:
            f.write(base64.b64decode(png))
        facts["problems"] = problems(b.events)
        facts["resources"] = sorted({e["params"]["response"]["url"] for e in b.events
                                     if e.get("method") == "Network.responseReceived"})
        # Every request the page made, answered or not (a blocked one has no response).
        facts["requests"] = sorted({e["params"]["request"]["url"] for e in b.events
                                    if e.get("method") == "Network.requestWillBeSent"})
        print(json.dumps(facts))
    finally:
        b.close()


if __name__ == "__main__":
    main()
