"""report.html of `avsr evaluate` and `avsr evaluate-report`: real runs of a tiny asr/vsr/avsr model on a
generated dataset (a real face video with speech) under two SNRs and one occlusion kind; the page read back
with html.parser, and opened in a headless Chromium."""

from __future__ import annotations

import json
import math
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
from typer.testing import CliRunner

from avsr_cli.cli import app
from tests.support.browser import browser_missing, chrome

# clip id -> reference: one video, so one (random) hypothesis of two words per mode; references of one,
# three and ten words give clips of different WERs (hypothesis words beyond the reference are insertions)
TEXTS = {
    "talk0": "yes",
    "talk1": "we were doing",
    "talk2": "a lot of low level drug cases on the streets",
}


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


class Page(HTMLParser):
    """What the tests read from a page: plot points (<g id> and <title>), the worst list, media links,
    every src/href, the clip data, and whether it parsed through."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.titles: dict[str, str] = {}  # SVG group id -> its <title>
        self.worst: list[dict] = []  # attributes of each li.clip
        self.audio: list[str] = []
        self.links: list[tuple[str, str, str]] = []  # (tag, attribute, value) of every src/href
        self.ids: list[str] = []
        self.data: dict | None = None
        self._stack: list[tuple[str, str | None]] = []
        self._text: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.append(a["id"])
        for key in ("src", "href"):
            if key in a:
                self.links.append((tag, key, a[key]))
        if tag == "li" and "clip" in (a.get("class") or ""):
            self.worst.append(a)
        if tag == "audio":
            self.audio.append(a["src"])
        self._stack.append((tag, a.get("id")))
        self._text = []

    def handle_endtag(self, tag):
        while self._stack:
            open_tag, element_id = self._stack.pop()
            if open_tag == tag:
                break
        if tag == "title" and self._stack and self._stack[-1][0] == "g":
            self.titles[self._stack[-1][1]] = "".join(self._text)
        if tag == "script" and element_id == "clip-data":
            self.data = json.loads("".join(self._text))

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        self._stack.pop()

    def handle_data(self, data):
        self._text.append(data)


def wer_of(title: str) -> float:
    return float(re.search(r"WER ([0-9.]+) %", title)[1])


@pytest.fixture(scope="module")
def runs(av_ckpt, lrs3_clip, mean_face, tmp_path_factory):
    """A project folder: data/ (three talking-face clips and a broken one, each with a transcript),
    manifest.csv over the same clips by absolute paths (plus a missing file), and report folders under
    runs/, made by `avsr evaluate` started in that folder:
    a: manifest, asr + avsr, clean/5/0 dB, gaussian_blur levels 1 and 3 (12 conditions)
    b: data/, asr, clean/5 dB;  c: data/, asr, clean, --normalizer none;  d: as c, lrs, --limit 2."""
    root = tmp_path_factory.mktemp("project")
    data = root / "data"
    data.mkdir()
    for name, text in TEXTS.items():
        shutil.copy(lrs3_clip, data / f"{name}.mp4")
        (data / f"{name}.txt").write_text(text + "\n")
    (data / "broken.mp4").write_bytes(b"\0\0\0 ftypisom not really a video")
    (data / "broken.txt").write_text("nothing to hear\n")
    rows = [f"{i},{data / i}.mp4,{t}" for i, t in {**TEXTS, "broken": "nothing to hear", "gone": "x"}.items()]
    (root / "manifest.csv").write_text("id,path,transcript\n" + "\n".join(rows) + "\n")
    common = ["-c", av_ckpt, "--max-new-tokens", "12", "--mouth-cache", root / "mouth", "-q"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("AVSR_MEAN_FACE", str(mean_face))
        a = ["manifest.csv", "--mode", "asr", "--mode", "avsr", "--snr", "5,0"]
        a += ["--occlusion", "gaussian_blur", "--level", "1,3", "--report-dir", "runs/a"]
        for args in (
            a,
            ["data", "--snr", "5", "--report-dir", "runs/b"],
            ["data", "--normalizer", "none", "--report-dir", "runs/c"],
            ["data", "--limit", "2", "--report-dir", "runs/d"],
        ):
            r = run("evaluate", *args, *common)
            assert r.exit_code == 0, r.stderr
    return root


def read_page(path: Path) -> tuple[str, Page]:
    text = path.read_text(encoding="utf-8")
    return text, Page(text)


def alignment_wers(path: Path) -> list[float]:
    """Per-clip WERs (%) as alignment.txt (written by evaluate, not by the page) gives them."""
    return [float(m[1]) for m in re.finditer(r"^\S+: WER ([0-9.]+)%", path.read_text(), re.M)]


def test_page_of_a_run(runs):
    folder = runs / "runs" / "a"
    summary = json.loads((folder / "summary.json").read_text())
    text, page = read_page(folder / "report.html")
    print(f"report.html of run a: {len(text.encode()) / 1024:.1f} kB")
    conditions = summary["conditions"]
    assert len(conditions) == 12  # asr x 3 SNRs, avsr x 3 SNRs x (none, level 1, level 3)
    assert {c["occlusion"] for c in conditions} == {"none", "gaussian_blur:1", "gaussian_blur:3"}
    # one point per condition (WER vs SNR when unoccluded, WER vs level otherwise), with summary's value
    points = {gid: t for gid, t in page.titles.items() if gid.startswith("pt-")}
    assert sorted(points) == sorted(f"pt-0-{i}" for i in range(len(conditions)))
    for i, c in enumerate(conditions):
        assert wer_of(points[f"pt-0-{i}"]) == pytest.approx(100 * c["scores"]["wer"], abs=0.006)
    snr_plot = text[text.index('id="plot-snr"') : text.index("</figure>", text.index('id="plot-snr"'))]
    assert all((f'id="pt-0-{i}"' in snr_plot) == (c["occlusion"] == "none") for i, c in enumerate(conditions))
    # the run, its failure and its skipped entry, with reasons
    assert "tiny-av" in text and "gaussian_blur, levels 1, 3" in text
    assert "failures" in page.ids and "broken" in text and "skipped" in page.ids and "gone.mp4" in text
    # worst clips: WER order, the highest WERs of alignment.txt
    wers = [float(li["data-wer"]) for li in page.worst]
    assert len(wers) == 20 and wers == sorted(wers, reverse=True)
    expected = sorted(alignment_wers(folder / "alignment.txt"), reverse=True)[:20]
    assert [round(w, 1) for w in wers] == expected
    # media links resolve from the report folder to the dataset's clips; no absolute path anywhere
    clips = {(runs / "data" / f"{i}.mp4").resolve() for i in TEXTS}
    assert page.audio and {(folder / unquote(src)).resolve() for src in page.audio} <= clips
    assert {(folder / unquote(href)).resolve() for _, _, href in page.data["clips"]} >= clips
    assert str(runs) not in text and str(Path.home()) + "/" not in text and "/tmp/" not in text
    # self-contained: nothing outside the page but the relative media links
    for tag, attr, value in page.links:
        assert not urlsplit(value).scheme or value.startswith("data:"), (tag, attr, value)
    assert all(tag in ("audio", "a", "link") for tag, _, _ in page.links)
    assert len(page.data["rows"]) == len(json.loads((folder / "summary.json").read_text())["conditions"]) * 4


def test_page_regenerated_identically_and_after_a_move(runs, tmp_path):
    folder = runs / "runs" / "b"
    first = (folder / "report.html").read_bytes()
    r = run("evaluate-report", folder)
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == str(folder / "report.html")
    assert (folder / "report.html").read_bytes() == first  # deterministic, SVG ids included
    moved = tmp_path / "elsewhere" / "project"
    shutil.copytree(runs / "data", moved / "data")
    shutil.copytree(folder, moved / "runs" / "b")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)  # another folder than the run's
        r = run("evaluate-report", "elsewhere/project/runs/b")
    assert r.exit_code == 0, r.stderr
    _, page = read_page(moved / "runs" / "b" / "report.html")
    targets = {(moved / "runs" / "b" / unquote(src)).resolve() for src in page.audio}
    assert targets and targets <= {(moved / "data" / f"{i}.mp4").resolve() for i in TEXTS}


def test_comparison_page_and_incomparable_runs(runs, tmp_path):
    out = tmp_path / "compare.html"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(runs / "runs")  # folders named relative to here, not to where the runs started
        r = run("evaluate-report", "a", "b", "-o", out)
    assert r.exit_code == 0, r.stderr
    text, page = read_page(out)
    for k, name in enumerate("ab"):
        summary = json.loads((runs / "runs" / name / "summary.json").read_text())
        for i, c in enumerate(summary["conditions"]):
            assert wer_of(page.titles[f"pt-{k}-{i}"]) == pytest.approx(100 * c["scores"]["wer"], abs=0.006)
    assert "a · asr" in text and "b · asr" in text  # one line per run and mode on shared axes
    assert {(out.parent / unquote(h)).resolve() for t, _, h in page.links if t == "a"} >= {
        (runs / "runs" / n / "report.html").resolve() for n in "ab"
    }
    refused = tmp_path / "refused.html"
    r = run("evaluate-report", runs / "runs" / "b", runs / "runs" / "c", "-o", refused)
    assert r.exit_code == 2 and "normaliser none, not lrs" in r.stderr and "Traceback" not in r.stderr
    r = run("evaluate-report", runs / "runs" / "b", runs / "runs" / "d", "-o", refused)
    assert r.exit_code == 2 and "dataset data (2 clips), not data (4 clips" in r.stderr
    assert not refused.exists()


def test_embedded_excerpts_are_the_audio_as_heard(runs, tmp_path):
    import base64
    import io

    import soundfile as sf

    from avsr_cli.frontends.media import load_audio

    folder = runs / "runs" / "b"
    out = tmp_path / "embedded.html"
    r = run("evaluate-report", folder, "--embed-audio", "--worst", "6", "-o", out)
    assert r.exit_code == 0, r.stderr
    _, page = read_page(out)
    assert len(page.worst) == len(page.audio) == 6  # 3 clips that decode x (clean, 5 dB)
    gains = {}  # (clip, condition) -> power of what the page plays over that of the clean media, dB
    for li, src in zip(page.worst, page.audio, strict=True):
        head, _, payload = src.partition(",")
        assert head == "data:audio/mpeg;base64"
        heard, rate = sf.read(io.BytesIO(base64.b64decode(payload)), dtype="float32")
        clean = load_audio(runs / "data" / f"{li['data-id']}.mp4")
        assert rate == 16000 and abs(len(heard) - len(clean)) < 0.2 * rate  # the whole 6.2 s clip
        gains[li["data-id"], li["data-condition"]] = 10 * math.log10(np.mean(heard**2) / np.mean(clean**2))
    for clip in TEXTS:
        # clean: the clip itself (less what MP3 leaves out); 5 dB: noise a third as strong added, +1.19 dB
        assert abs(gains[clip, "asr · clean"]) < 0.8
        added = gains[clip, "asr · 5 dB"] - gains[clip, "asr · clean"]
        assert added == pytest.approx(10 * math.log10(1 + 10**-0.5), abs=0.3), clip


def test_merged_shards_get_their_page(av_ckpt, runs, tmp_path):
    common = [runs / "data", "-c", av_ckpt, "--snr", "5", "--max-new-tokens", "12", "-q"]
    for i in (1, 2):
        r = run("evaluate", *common, "--shard", f"{i}/2", "--report-dir", tmp_path / "shards")
        assert r.exit_code == 0, r.stderr
    assert not (tmp_path / "shards" / "report.html").exists()  # a shard has no page of its own
    r = run("evaluate-merge", tmp_path / "shards", "-o", tmp_path / "merged", "-q")
    assert r.exit_code == 0, r.stderr
    summary = json.loads((tmp_path / "merged" / "summary.json").read_text())
    _, page = read_page(tmp_path / "merged" / "report.html")
    for i, c in enumerate(summary["conditions"]):
        assert wer_of(page.titles[f"pt-0-{i}"]) == pytest.approx(100 * c["scores"]["wer"], abs=0.006)
    targets = {(tmp_path / "merged" / unquote(src)).resolve() for src in page.audio}
    assert targets and targets <= {(runs / "data" / f"{i}.mp4").resolve() for i in TEXTS}


def test_folders_that_are_no_reports(tmp_path):
    r = run("evaluate-report", tmp_path / "nothing")
    assert r.exit_code == 2 and "not a report folder" in r.stderr
    r = run("evaluate-report", tmp_path)
    assert r.exit_code == 2 and f"{tmp_path}: no summary.json" in r.stderr
    (tmp_path / "summary.json").write_text('{"conditions": [')
    r = run("evaluate-report", tmp_path)
    assert r.exit_code == 2 and f"{tmp_path / 'summary.json'}: not valid JSON" in r.stderr
    assert not (tmp_path / "report.html").exists() and "Traceback" not in r.stderr


@pytest.mark.skipif(browser_missing() is not None, reason=str(browser_missing()))
def test_page_in_a_browser(runs, tmp_path):
    from PIL import Image, ImageStat
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    page = runs / "runs" / "a" / "report.html"
    driver = chrome(tmp_path / "profile")
    try:
        driver.get(page.as_uri())

        def wers():
            cells = driver.find_elements(By.CSS_SELECTOR, "#clip-table tbody tr.row")
            return [float(tr.get_attribute("data-wer")) for tr in cells if tr.get_attribute("data-wer")]

        def ids():
            cells = driver.find_elements(By.CSS_SELECTOR, "#clip-table tbody tr.row td:nth-child(2)")
            return [td.text for td in cells]

        before = wers()
        assert len(before) == 12 * 3  # every scored clip of every condition (the broken one failed)
        header = driver.find_element(By.CSS_SELECTOR, '#clip-table th[data-key="wer"]')
        header.click()
        ascending = wers()
        # A random tiny model may score every clip alike; the clip column below always has distinct keys.
        assert ascending == sorted(before) and (ascending != before or len(set(before)) == 1)
        assert header.get_attribute("aria-sort") == "ascending"
        header.click()
        assert wers() == sorted(before, reverse=True)
        listed = ids()  # condition by condition, as evaluate wrote them
        driver.find_element(By.CSS_SELECTOR, '#clip-table th[data-key="id"]').click()
        assert ids() == sorted(listed) != listed
        Select(driver.find_element(By.ID, "clip-filter")).select_by_index(2)  # the second condition
        shown = driver.find_elements(By.CSS_SELECTOR, "#clip-table tbody tr.row")
        assert len(shown) == 4 and {tr.find_element(By.TAG_NAME, "td").text for tr in shown} == {"asr · 5 dB"}
        shown[0].click()  # its alignment and player
        assert driver.find_elements(By.CSS_SELECTOR, "#clip-table tr.detail audio")
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        driver.save_screenshot(str(tmp_path / "report.png"))
        plot = driver.find_element(By.ID, "plot-snr")
        plot.screenshot(str(tmp_path / "plot.png"))
    finally:
        driver.quit()
    image = Image.open(tmp_path / "plot.png").convert("L")
    assert image.width > 300 and image.height > 150
    assert ImageStat.Stat(image).var[0] > 200  # lines, markers, labels: not a blank area
    assert (tmp_path / "report.png").stat().st_size > 10_000
