"""The README's picture of the page: `t2p serve`'s page in headless Chromium (Debian's package),
a sign requested and its refinement shown half way (the step slider at the middle step).

    t2p serve --model runs/default/best --port 8140 &
    python bench/page_screenshot.py --url http://127.0.0.1:8140 --text B --language ase --steps 8 \
        --show-step 3 -o docs/images/page.png
"""
from __future__ import annotations

import argparse
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--text", default="B")
    parser.add_argument("--language", default="ase")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--show-step", type=int, default=3, help="the refinement step the picture shows")
    parser.add_argument("-o", "--out", type=Path, default=Path("docs/images/page.png"))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1100, "height": 820})
        page.goto(f"{args.url}/")
        page.wait_for_function("document.querySelector('#language').options.length > 0")
        page.select_option("#language", args.language)
        page.fill("#text", args.text)
        page.fill("#steps", str(args.steps))
        page.click("#send")
        page.wait_for_function(f"Number(document.querySelector('#canvas').dataset.steps) >= {args.steps}", timeout=60_000)
        page.click("#play")  # stop the playback the end of the stream started
        page.fill("#step", str(args.show_step))
        page.dispatch_event("#step", "input")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out), full_page=True)
        browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
