"""The web demo's speed in the page and its memory: `imagegpt demo` in a child process, Debian's Chromium driving
the page (Playwright), and the same completion run by the library directly in this process as the reference.

Per packaged model and repetition, interleaved:
  page: click the model's first example, set rows to keep and samples, press Complete; a MutationObserver in the
        page stamps (performance.now()) every change of the status line "row r of H". Time to first row = first
        status with r > kept minus the click; rows/s = rows painted after the first / time between the first and
        the last update (the browser's view, network and rendering included).
  library: demo_core.stream_complete with the same settings and threads, here, without a server: the same two
        numbers, and page / library as the web's cost.
Server memory: VmRSS / VmHWM of the `imagegpt demo` process (idle after start, and after the runs).

  python benchmarks/bench_demo.py                               # packaged models, rows = half, 4 samples, 3 reps
  python benchmarks/bench_demo.py --reps 5 --samples 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import torch

from imagegpt.demo_core import ModelChoices, example_images, read_image, stream_complete
from imagegpt.pretrained import packaged_examples, packaged_models

RESULTS = Path(__file__).parent / "results"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory(pid: int) -> dict:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {k: round(int(fields[k].split()[0]) / 1024, 1) for k in ("VmRSS", "VmHWM")}  # MiB


def _page_run(page, example_index: int, rows: int, samples: int) -> dict:
    page.locator("#examples img").nth(example_index).click()
    page.wait_for_timeout(1500)  # the model switch and the cut preview settle
    for slider, value in (("#samples-slider", samples), ("#rows-slider", rows)):
        box = page.locator(f"{slider} input[type=number]")
        box.fill(str(value))
        box.press("Enter")
    page.wait_for_timeout(500)
    page.evaluate("""() => { window.__log = []; const s = document.querySelector('#complete-status');
        window.__obs && window.__obs.disconnect();
        window.__obs = new MutationObserver(() => window.__log.push([performance.now(), s.innerText]));
        window.__obs.observe(s, {subtree: true, childList: true, characterData: true});
        window.__t0 = performance.now(); document.querySelector('#complete-button').click(); }""")
    # the old status stays on screen until the first update: wait for this run's start (row = kept), then its end
    page.wait_for_function(f"""() => {{ const i = window.__log.findIndex(([t, s]) => /row {rows} of /.test(s));
        return i >= 0 && window.__log.slice(i).some(([t, s]) => /done/.test(s)); }}""", timeout=600_000)
    log, t0 = page.evaluate("() => [window.__log, window.__t0]")
    start = next(i for i, (_, text) in enumerate(log) if f"row {rows} of " in text)
    stamps = {}
    for t, text in log[start:]:
        m = re.search(r"row (\d+) of (\d+)", text)
        if m and int(m.group(1)) > rows and int(m.group(1)) not in stamps:
            stamps[int(m.group(1))] = t
    first, last = min(stamps.values()), max(stamps.values())
    seen = len(stamps)
    return dict(first_row_s=(first - t0) / 1000, rows_per_s=(seen - 1) / ((last - first) / 1000) if seen > 1 else None,
                rows_seen=seen, server_status=log[-1][1])  # fmt: skip


def _library_run(entry, rgb, rows: int, samples: int) -> dict:
    t0 = time.perf_counter()
    stamps = [time.perf_counter() - t0 for frame in stream_complete(entry, rgb, rows, samples, seed=0)][1:]
    return dict(first_row_s=stamps[0], rows_per_s=(len(stamps) - 1) / (stamps[-1] - stamps[0]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    torch.set_num_threads(args.threads)
    port = _free_port()
    cmd = [str(Path(sys.executable).parent / "imagegpt"), "demo", "--port", str(port), "--concurrency", "1",
           "--threads", str(args.threads)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        memory = {"idle": _memory(server.pid)}
        choices = ModelChoices()
        names = packaged_models()
        gallery = [model for _, model, _ in example_images()]  # the page's example gallery, in order
        starts = {n: gallery.index(n) for n in names}
        results = []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 1200})
            page.goto(url, wait_until="domcontentloaded")
            page.locator("#examples img").first.wait_for(timeout=120_000)
            for rep in range(args.reps):
                for name in names:
                    entry = choices.get(name)
                    rows = entry.height // 2
                    rgb = read_image(packaged_examples(name)[0])[0]
                    web = _page_run(page, starts[name], rows, args.samples)
                    lib = _library_run(entry, rgb, rows, args.samples)
                    results.append(dict(model=name, rep=rep, rows=rows, height=entry.height, page=web, library=lib))
                    print(f"{name} rep {rep}: page first row {web['first_row_s']:.2f} s, {web['rows_per_s']:.1f} "
                          f"rows/s ({web['rows_seen']} updates seen) | library {lib['first_row_s']:.2f} s, "
                          f"{lib['rows_per_s']:.1f} rows/s", flush=True)  # fmt: skip
            browser.close()
        memory["after"] = _memory(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    summary = {}
    for name in names:
        runs = [r for r in results if r["model"] == name]
        med = {k: {m: statistics.median(r[k][m] for r in runs) for m in ("first_row_s", "rows_per_s")}
               for k in ("page", "library")}  # fmt: skip
        med["page_over_library_rows_per_s"] = med["page"]["rows_per_s"] / med["library"]["rows_per_s"]
        summary[name] = med
        print(f"{name} (median of {len(runs)}; {args.samples} samples, keep {runs[0]['rows']} of "
              f"{runs[0]['height']} rows, {args.threads} thread, float32 CPU): page first row "
              f"{med['page']['first_row_s']:.2f} s, {med['page']['rows_per_s']:.1f} rows/s; library "
              f"{med['library']['first_row_s']:.2f} s, {med['library']['rows_per_s']:.1f} rows/s; page/library "
              f"{med['page_over_library_rows_per_s']:.2f}x")  # fmt: skip
    print(f"server memory (MiB): idle {memory['idle']}, after {memory['after']}")
    out = dict(cpu=platform.processor() or platform.machine(), torch=torch.__version__, samples=args.samples,
               threads=args.threads, summary=summary, memory_mib=memory, runs=results, load=os.getloadavg())
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "demo_cpu.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {RESULTS / 'demo_cpu.json'}")


if __name__ == "__main__":
    main()
