"""The review page at real DeepLesion's scale: a synthetic card set (tests/review_data.py) of N cards, opened in
headless chromium through a static server. Prints what the first view fetched against the whole page, the time
to the first card, and saves a screenshot.

    scripts/in-env python benchmarks/review_scale.py --cards 20000 --screenshot docs/review_20000.png
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from review_data import counting_server, synthetic_review_page  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cards", type=int, default=20_000)
    ap.add_argument("--screenshot", type=Path)
    args = ap.parse_args()
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,900"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=shutil.which("chromedriver")), options=opts)
    with tempfile.TemporaryDirectory() as tmp:
        page = synthetic_review_page(Path(tmp) / "review", args.cards)
        folder = page.parent
        whole = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        data = sum(f.stat().st_size for f in (folder / "data").iterdir())
        n_files, index = len(list((folder / "data").iterdir())), page.stat().st_size
        with counting_server(folder) as (url, served):
            t = time.perf_counter()
            driver.get(f"{url}/index.html")
            WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#card figcaption") and d.execute_script(
                "return [...document.querySelectorAll('#card img')].every(i => i.complete && i.naturalWidth > 0)"))
            seconds = time.perf_counter() - t
            fetched = sorted(set(served))
            first = sum((folder / f.lstrip("/")).stat().st_size for f in fetched)
            if args.screenshot:
                driver.save_screenshot(str(args.screenshot))
        driver.quit()
    print(f"review page, {args.cards} cards: first view {first / 1e6:.3f} MB ({', '.join(fetched)}) in {seconds:.2f} s; "
          f"index.html {index / 1e3:.1f} kB; the whole page {whole / 1e6:.1f} MB, of which the cards' "
          f"data {data / 1e6:.1f} MB in {n_files} files (all inline before: index.html "
          f"would be ~{(data + index) / 1e6:.1f} MB); ratio whole/first {whole / first:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
