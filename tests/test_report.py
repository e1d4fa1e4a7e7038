"""HTML reports: `irtool restore --report`, `irtool eval --report` (one and several models, --figure) and
`irtool report a.json b.json`. The pages are checked as text (escaping, every image listed, no network reference),
as data (worst/best are the real extremes, crops are where they say), and in headless Chromium (images load, the
slider moves by keyboard, tables sort, no console error, no request leaves the file); screenshots are kept."""

from __future__ import annotations

import csv
import io as stdio
import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from benchmark_data import make_moce_layout
from browser import Browser, find_chromium
from PIL import Image
from restore_fixtures import photo, tiny_checkpoint
from typer.testing import CliRunner

from irtool.cli import app
from irtool.images import files as io
from irtool.report import evaluation, images, render

runner = CliRunner()
NASTY = "<script>.png"  # must render as text
NASTY2 = "<img src=x onerror=alert(1)>.png"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class _Page(HTMLParser):
    """Tags and attributes of a page, to check what a browser would build from it."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def all(self, tag: str, **want: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag and all(want[k] in (a.get(k) or "").split() for k in want)]


def _assert_offline(page: _Page, html: str) -> None:
    """No element can fetch anything from a network: every src is a data: URI, every link a relative file or an
    anchor, and the CSP forbids everything else."""
    csp = page.all("meta")[1]["content"] if len(page.all("meta")) > 1 else ""
    assert "default-src 'none'" in csp and "img-src data: file:" in csp
    for tag, attrs in page.tags:
        for key in ("src", "href", "action", "srcset", "poster"):
            value = attrs.get(key)
            if value is not None:
                assert value.startswith(("data:image/", "#")) or "://" not in value, (tag, key, value[:80])
    assert "http://" not in html and "https://" not in html


@pytest.fixture(scope="module")
def restored(tmp_path_factory):
    """A small restore run with --report: three photos (two with names made to break HTML) and one broken file."""
    root = tmp_path_factory.mktemp("restore-report")
    checkpoint = tiny_checkpoint(root)
    src = root / "in"
    src.mkdir()
    for seed, name in enumerate(["a.png", NASTY, NASTY2]):
        Image.fromarray(photo(48, 64, seed=seed)).save(src / name, format="PNG")
    (src / "broken.png").write_bytes(b"not a png")
    report = root / "out" / "report.html"
    result = runner.invoke(
        app, ["restore", str(src), str(root / "out"), "-w", str(checkpoint), "--report", str(report), "--json", "-q"]
    )
    reports = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return root, result, report, reports, checkpoint


def test_restore_report_lists_every_image_escaped_with_its_routing_and_failures(restored):
    root, result, report, reports, checkpoint = restored
    assert result.exit_code == 1  # one file failed, the others are restored and reported
    html = report.read_text(encoding="utf-8")
    page = _Page(html)
    assert len(page.all("script")) == 1  # only the viewer's own; the file names stayed text
    assert "&lt;script&gt;.png" in html and "&lt;img src=x onerror=alert(1)&gt;.png" in html
    text = "".join(page.text)
    assert NASTY in text and NASTY2 in text
    _assert_offline(page, html)
    # every input has a card; ok ones carry a before/after pair of previews decoded from the files written
    cards = page.all("section", **{"class": "image"})
    assert len(cards) == 4 and len(page.all("figure", **{"class": "compare"})) == 3
    for r in reports:
        if r["status"] == "ok":
            assert Path(r["output"]).name in text
    before = [a["src"] for a in page.all("img", **{"class": "before"})]
    assert all(src.startswith("data:image/png;base64,") for src in before)  # 64 px: lossless PNG previews
    # the first preview is the input itself (64x48 is under the preview size: no resampling)
    first = next(r for r in reports if r["input"].endswith("a.png"))
    card_order = [Path(r["input"]).name for r in reports if r["status"] == "ok"]
    decoded = np.asarray(
        Image.open(stdio.BytesIO(__import__("base64").b64decode(before[card_order.index("a.png")].split(",", 1)[1])))
    )
    assert np.array_equal(decoded, images.as_uint8(io.read_image(first["input"]).rgb))
    # the failure is listed with its error, in the problems and in its card
    broken = next(r for r in reports if r["status"] == "failed")
    assert text.count(broken["error"]) >= 2
    # routing: every layer's expert and gate appears as the engine reported it
    gates_line = next(s for s in page.text if s.strip().startswith("L0 e"))
    assert gates_line.strip().startswith(f"L0 e{first['experts'][0][0]} ") or any(
        f"L0 e{r['experts'][0][0]} {r['gates'][0][0]:.2f}" in text for r in reports if r["status"] == "ok"
    )
    # summary: counts, device, precision and the weights' fingerprint
    from irtool.loading import load_model
    from irtool.restoration.calibration import fingerprint

    assert fingerprint(load_model(checkpoint, device="cpu"))[:16] in html
    assert re.search(r"restored</dt><dd>3 of 4</dd>", html) and ">cpu<" in html and ">fp32<" in html
    # full size on click: the links are relative to the report and point at the real files
    links = [a["href"] for a in page.all("a") if a.get("href") and not a["href"].startswith("#")]
    from urllib.parse import unquote

    assert links and all((report.parent / unquote(h)).resolve().is_file() for h in links)


def test_without_jinja2_report_is_one_line_naming_the_extra_before_any_work(tmp_path, monkeypatch):
    render.environment.cache_clear()
    monkeypatch.setitem(sys.modules, "jinja2", None)
    try:
        Image.fromarray(photo(16, 16)).save(tmp_path / "a.png")
        result = runner.invoke(
            app, ["restore", str(tmp_path / "a.png"), str(tmp_path / "out"), "--report", str(tmp_path / "r.html")]
        )
        assert result.exit_code == 1 and not (tmp_path / "out").exists()
        assert result.stderr.strip() == "error: --report needs Jinja2: pip install 'irtool[report]'"
    finally:
        monkeypatch.delitem(sys.modules, "jinja2")
        render.environment.cache_clear()


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """Two tiny models on Rain100L (4 images) with --report, --figure, --json and --csv, images saved."""
    root = tmp_path_factory.mktemp("eval-report")
    make_moce_layout(root / "data", n=4)
    a, b = tiny_checkpoint(root, seed=0, name="a.pth"), tiny_checkpoint(root, seed=1, name="b.pth")
    report = root / "eval.html"
    args = ["eval", "-w", str(a), "-w", str(b), "--data-root", str(root / "data"), "--dataset", "rain100l", "--reported", "moce_ir.aio3",
            "--report", str(report), "--figure", "rain100l/rain-002.png:8,4,24,20", "--json-file", str(root / "e.json"),
            "--csv", str(root / "e.csv"), "--save-images", str(root / "saved"), "-q"]  # fmt: skip
    result = runner.invoke(app, args)
    return root, result, report


def test_eval_report_with_two_models(evaluated):
    root, result, report = evaluated
    assert result.exit_code == 0, result.output
    runs = json.loads((root / "e.json").read_text())
    assert [r["model"]["source"] for r in runs] == [str(root / "a.pth"), str(root / "b.pth")]
    rows = list(csv.DictReader((root / "e.csv").read_text().splitlines()))
    assert [r["model"] for r in rows] == ["a.pth"] * 4 + ["b.pth"] * 4
    assert sorted(p.relative_to(root / "saved").as_posix() for p in (root / "saved").rglob("*.png"))[:1] == [
        "a.pth/rain100l/rain-001.png"
    ]
    html = report.read_text(encoding="utf-8")
    page = _Page(html)
    _assert_offline(page, html)
    text = " ".join(page.text)
    # the metric table: each model's mean beside the paper's figure, the difference coloured by how far below it is
    for run in runs:
        s = run["datasets"][0]["summary"]
        assert f"{s['psnr']:.2f}" in text and f"{s['delta_psnr']:+.2f}" in text
    assert "38.57/0.984" in text and len(page.all("td", **{"class": "bad"})) >= 2  # random weights: far below
    # per image: one row per file, both models' PSNR in it
    table = page.all("table", **{"class": "perimage"})
    assert len(table) == 1
    per_image = runs[0]["datasets"][0]["images"]
    for image in per_image:
        assert image["file"] in text and f"{image['psnr']:.2f}" in text
    # worst and best are the real extremes of the first model, shown with input, output, truth and heat-map
    ordered = sorted(per_image, key=lambda i: i["psnr"])
    worst_heading = html.index("Worst images")
    assert html.index(ordered[0]["file"] + " · PSNR", worst_heading) < html.index("Best images")
    assert len(page.all("img", alt=None)) == 0 and any(
        "error heat-map" in (a.get("alt") or "") for a in page.all("img")
    )
    # the figure: input, both models and the truth, each the asked crop, with each model's PSNR under it
    figure = root / "eval.rain100l.rain-002.png"
    assert figure.is_file() and Image.open(figure).size[0] > 4 * 256
    assert "--figure rain100l/rain-002.png" in text and "x 8, y 4, 24 × 20 px" in text
    psnr_b = next(i for i in runs[1]["datasets"][0]["images"] if i["file"] == "rain-002.png")["psnr"]
    assert f"PSNR {psnr_b:.2f} dB" in text


def test_crops_are_the_pixels_of_the_saved_outputs_and_worst_window_finds_the_error():
    truth = np.zeros((40, 50, 3), np.uint8)
    out = truth.copy()
    out[22:30, 31:39] = 200  # the only error
    assert images.worst_window(out, truth, 8) == (31, 22, 8, 8)
    assert (
        images.clip_rect((45, 35, 20, 20), 50, 40) == (45, 35, 5, 5) and images.clip_rect((60, 0, 5, 5), 50, 40) is None
    )
    heat = images.heatmap(out, truth)
    assert heat[0, 0].tolist() == [13, 8, 60] and heat[25, 35].tolist() == [252, 255, 164]
    with pytest.raises(evaluation.IrtoolError, match=r"--figure x\.png:1,2: expected NAME:x,y,w,h"):
        evaluation.parse_figure("x.png:1,2")
    spec = evaluation.parse_figure("rain100l/a:b.png:1,2,3,4")
    assert (spec.dataset, spec.file, spec.rect) == ("rain100l", "a:b.png", (1, 2, 3, 4))


def test_report_command_merges_json_reports_with_their_saved_pictures(evaluated, tmp_path):
    root, _, _ = evaluated
    runs = json.loads((root / "e.json").read_text())
    (tmp_path / "a.json").write_text(json.dumps(runs[0]))
    (tmp_path / "b.json").write_text(json.dumps(runs[1]))
    out = tmp_path / "cmp.html"
    result = runner.invoke(
        app,
        [
            "report",
            str(tmp_path / "a.json"),
            str(tmp_path / "b.json"),
            "-o",
            str(out),
            "--figure",
            "rain-001.png:0,0,16,16",
        ],
    )
    assert result.exit_code == 0, result.output
    html = out.read_text(encoding="utf-8")
    assert "a.pth" in html and "b.pth" in html and "The same crops side by side" in html
    saved = images.as_uint8(io.read_image(root / "saved" / "b.pth" / "rain100l" / "rain-001.png").rgb)
    figure = tmp_path / "cmp.rain100l.rain-001.png"
    assert figure.is_file()
    # the merged page embeds b's crop exactly as its saved output holds it
    uris = re.findall(r'<img src="(data:image/png;base64,[^"]+)" alt="b\.pth: rain-001\.png"', html)
    crops = [np.asarray(Image.open(stdio.BytesIO(__import__("base64").b64decode(u.split(",", 1)[1])))) for u in uris]
    assert any(c.shape == (16, 16, 3) and np.array_equal(c, saved[:16, :16]) for c in crops)
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    failed = runner.invoke(app, ["report", str(bad), "-o", str(tmp_path / "x.html")])
    assert (
        failed.exit_code == 1
        and "not an irtool eval report" in failed.stderr
        and len(failed.stderr.strip().splitlines()) == 1
    )


# --------------------------------------------------------------------------------------------------------------------
# In a real browser

CHROMIUM, WHY = find_chromium()
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason=WHY)


@pytest.fixture(scope="module")
def browser():
    with Browser(CHROMIUM) as b:  # type: ignore[arg-type]
        yield b


def _artefact(tmp_path_factory, name: str) -> Path:
    """Screenshots are kept with pytest's temp dirs (the last runs survive), and in $IRTOOL_ARTEFACTS if set."""
    import os

    folder = Path(os.environ.get("IRTOOL_ARTEFACTS") or tmp_path_factory.getbasetemp() / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def _check_clean(b: Browser, report: Path) -> None:
    b.drain()
    assert b.problems() == []
    schemes = {url.split(":", 1)[0] for url in b.requests()}
    assert schemes <= {"file", "data"}, b.requests()
    assert report.resolve().as_uri() in b.requests()
    assert b.js("document.documentElement.dataset.ready") == "1"
    # every image decoded (a broken data URI or a blocked one has naturalWidth 0)
    assert b.js("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")


@needs_browser
def test_restore_report_in_chromium(restored, browser, tmp_path_factory):
    _, _, report, reports, _ = restored
    browser.open(report)
    _check_clean(browser, report)
    assert browser.js("document.images.length") == 2 * sum(r["status"] == "ok" for r in reports)
    assert browser.js("document.querySelectorAll('section.image').length") == len(reports)
    # the first file name is shown as text, not run as markup
    names = browser.js("Array.from(document.querySelectorAll('section.image h3')).map(h => h.textContent)")
    assert any(n.endswith(NASTY) for n in names) and any(n.endswith(NASTY2) for n in names)
    clip = "getComputedStyle(document.querySelector('.compare .after')).clipPath"
    assert browser.js(clip) == "inset(0px 0px 0px 50%)"
    browser.js("document.querySelector('.comparison input[type=range]').focus()")
    for _ in range(5):
        browser.key("ArrowRight", "ArrowRight", 39)
    assert browser.js("document.querySelector('.comparison input[type=range]').value") == "55"
    assert browser.js(clip) == "inset(0px 0px 0px 55%)"
    assert browser.js("document.querySelector('.compare .divider').style.left") == "55%"
    browser.js("document.querySelector('.comparison button.toggle').click()")
    assert browser.js(clip) == "inset(0px 0px 0px 0%)"  # all "after"
    browser.js(
        "document.querySelector('.comparison input[type=range]').value = 50; document.querySelector('.comparison input[type=range]').dispatchEvent(new Event('input'))"
    )
    shot = browser.screenshot(_artefact(tmp_path_factory, "report_restore.png"), clip_height=1400)
    assert Image.open(shot).size[0] == 1280
    assert browser.problems() == []


@needs_browser
def test_eval_report_in_chromium_sorts_by_clicking(evaluated, browser, tmp_path_factory):
    root, _, report = evaluated
    browser.open(report)
    _check_clean(browser, report)
    column = "Array.from(document.querySelectorAll('table.perimage tbody tr')).map(r => Number(r.cells[{}].dataset.v))"
    # click the first model's PSNR header like a user: ascending, then descending
    box = browser.js(
        "(() => { const b = document.querySelectorAll('table.perimage thead tr:last-child th button')[3];"
        " b.scrollIntoView(); const r = b.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
    )
    browser.click(*box)
    values = browser.js(column.format(3))
    assert values == sorted(values) and len(values) == 4
    assert (
        browser.js("document.querySelectorAll('table.perimage thead tr:last-child th')[3].getAttribute('aria-sort')")
        == "ascending"
    )
    browser.click(*box)
    assert browser.js(column.format(3)) == sorted(values, reverse=True)
    runs = json.loads((root / "e.json").read_text())
    assert np.allclose(sorted(values), sorted(i["psnr"] for i in runs[0]["datasets"][0]["images"]), rtol=0, atol=1e-9)
    # keyboard: the header buttons are reachable and Enter sorts by file name
    browser.js("document.querySelector('table.perimage thead tr:last-child th button').focus()")
    browser.key("Enter", "Enter", 13, "\r")
    files = browser.js(
        "Array.from(document.querySelectorAll('table.perimage tbody tr')).map(r => r.cells[0].textContent)"
    )
    assert files == sorted(files)
    browser.js("window.scrollTo(0, 0)")
    browser.screenshot(_artefact(tmp_path_factory, "report_eval.png"), clip_height=1400)
    assert browser.problems() == []
