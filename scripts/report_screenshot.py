"""The screenshot of docs/evaluation-report.md: a real run's report page, as a browser shows it.

The built-in model (avsr-tiny-en) scores twelve everyday sentences spoken by an offline voice it did not
train on (hibari heart where installed, else the first voice available), clean and in babble noise at 10,
5 and 0 dB (`avsr evaluate ... --report-dir`); headless Chromium opens report.html from file:// and the top
of the page (the run, the table, the plots, the first worst clips) is saved as an 8-bit PNG.

Needs the built-in model and offline voices (make install), Chromium and chromedriver (apt-get install -y
chromium chromium-driver) and selenium. About 5 minutes on 2 CPU cores.

    python -m scripts.report_screenshot [--out docs/img/report.png] [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = [
    "the kettle is on so we can have tea in a minute",
    "please close the window before you leave the house",
    "my brother bought a blue bicycle last summer",
    "the train to the city was twenty minutes late",
    "she planted tomatoes and beans behind the garage",
    "we should call the plumber about the kitchen sink",
    "the library opens at nine on saturday morning",
    "he forgot his umbrella and got wet on the way home",
    "there are three apples left in the fruit bowl",
    "the children painted a picture of the old lighthouse",
    "turn left at the bakery and walk past the school",
    "our neighbours are moving to a smaller flat next month",
]
SNRS = "10,5,0"
WIDTH = 1200


def make_dataset(folder: Path) -> None:
    """One WAV and one transcript per sentence."""
    from tests.support.speech import available_voices, synthesize

    voices = available_voices()
    voice = "hibari:heart" if "hibari:heart" in voices else None
    folder.mkdir(parents=True, exist_ok=True)
    for k, text in enumerate(SENTENCES):
        synthesize(text, folder / f"s{k:02d}.wav", voice=voice)
        (folder / f"s{k:02d}.txt").write_text(text + "\n", encoding="utf-8")


def evaluate(work: Path) -> Path:
    """`avsr evaluate data --snr 10,5,0 --report-dir report` run in `work` (relative paths on the page)."""
    report = work / "report"
    cmd = [sys.executable, "-m", "avsr_cli", "evaluate", "data", "--snr", SNRS, "--report-dir", "report"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    resume = ["--resume"] if (report / "results.jsonl").exists() else []
    subprocess.run([*cmd, *resume], cwd=work, check=True, env=env)
    return report / "report.html"


def screenshot(page: Path, out: Path, profile: Path) -> None:
    """The page at WIDTH css pixels, from its top to the end of the second worst clip (or the plots)."""
    from PIL import Image

    from tests.support.browser import chrome

    driver = chrome(profile, WIDTH, 1000)
    try:
        driver.get(page.as_uri())
        bottom = driver.execute_script(
            "const e = document.querySelector('#worst li:nth-child(2)') || document.getElementById('plots');"
            "return Math.ceil(e.getBoundingClientRect().bottom + window.scrollY + 16);"
        )
        driver.set_window_size(WIDTH, bottom + 200)  # the window's frame takes some of its height
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        if errors:
            raise SystemExit(f"the page logged errors: {errors}")
        shot = profile / "page.png"
        driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    image = Image.open(shot).convert("RGB")
    image = image.crop((0, 0, image.width, min(bottom, image.height)))
    out.parent.mkdir(parents=True, exist_ok=True)
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    print(f"{out}: {image.width}x{image.height}, {out.stat().st_size // 1024} kB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "report.png")
    parser.add_argument("--work", type=Path, help="keep the dataset and report here (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = (args.work or Path(tmp)).absolute()
        if not (work / "data").is_dir():
            make_dataset(work / "data")
        page = evaluate(work)
        screenshot(page, args.out.absolute(), Path(tmp) / "profile")


if __name__ == "__main__":
    main()
