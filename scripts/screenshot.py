"""A full-page screenshot of a local HTML file (results/report.html, a review page) in headless chromium,
Debian's `chromium` + `chromium-driver` driven by Selenium (`.ci/run` installs them). The README's report
picture is made this way from a finished default run:

    scripts/in-env python scripts/screenshot.py results/report.html docs/report.png
"""
from __future__ import annotations

import argparse
import base64
import shutil
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("page", type=Path, help="an HTML file")
    ap.add_argument("out", type=Path, help="the PNG to write")
    ap.add_argument("--width", type=int, default=1280, help="window width in px (default 1280)")
    ap.add_argument("--max-height", type=int, default=20000, help="cap on the page height in px")
    args = ap.parse_args(argv)
    if not args.page.is_file():
        print(f"error: {args.page}: no such file", file=sys.stderr)
        return 2
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_bin = shutil.which("chromedriver")
    if not (chromium and driver_bin):
        print("error: needs chromium and chromedriver on PATH (apt install chromium chromium-driver)", file=sys.stderr)
        return 2
    from selenium import webdriver

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              f"--window-size={args.width},900", "--hide-scrollbars"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_bin), options=opts)
    try:
        driver.get(args.page.resolve().as_uri())
        driver.execute_script("return document.fonts ? document.fonts.ready : null")
        height = min(int(driver.execute_script("return document.documentElement.scrollHeight")), args.max_height)
        # the whole page through the DevTools protocol (a window resized to the page's height painted its
        # last part black)
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": args.width, "height": height, "scale": 1}})
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(f".{args.out.name}.tmp.png")
        tmp.write_bytes(base64.b64decode(shot["data"]))
        tmp.replace(args.out)  # atomic: never a half-written picture
    finally:
        driver.quit()
    print(f"{args.page} -> {args.out} ({args.width} x {height} px)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
