"""`bonito report`: the HTML report of a run of the scripted engine (test_cli reports a run of
the tiny generator), of a run stopped or still going, of a run of 100k tasks, and the page as a
real headless browser (Debian's chromium) shows it."""

from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fake_engine import scripted_engines
from filelock import FileLock
from helpers import (
    HOSTILE,
    generate_passages_run,
    make_config,
    make_store,
    needs_chromium,
    needs_selenium,
    run_cli,
    store_tasks,
)

from bonito.publish.report import (
    StratifiedSample,
    fair_shares,
    histogram,
    source_line,
    write_report,
)
from bonito.runs.store import PlannedRequest, RunStore, SavedSample

CHARTS = 7
"""Coverage, task types, rejections and four length histograms."""


@pytest.fixture(scope="module")
def run(tokenizer_model, tmp_path_factory) -> Path:
    with scripted_engines():
        return generate_passages_run(tokenizer_model, tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def page(run) -> tuple[Path, str]:
    """The report of the run, written once: its path and its HTML."""
    path = run.parent / "report.html"
    write_report(run, path)
    return path, path.read_text(encoding="utf-8")


class Page(HTMLParser):
    """What a report holds: its charts, the sample table's rows, the text blocks shown (as
    (class, folded, text), folded: inside a <details>), the passages beside the tasks, the
    folds' summaries, the source lines and its scripts."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.charts, self.rows, self.scripts = 0, [], 0
        self.texts, self.summaries, self.sources = [], [], []
        self.into, self.folded = None, False
        self.feed(html)

    @property
    def passages(self) -> list[str]:
        return [text for kind, _, text in self.texts if kind == "text passage"]

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        kind = attrs.get("class") or ""
        if tag == "svg" and kind == "chart":
            assert float(attrs["width"]) > 0 and float(attrs["height"]) > 0
            self.charts += 1
        elif tag == "tr" and "data-type" in attrs:
            self.rows.append((attrs["data-type"], attrs["data-status"]))
        elif tag == "script":
            self.scripts += 1
        elif tag == "details":
            self.folded = True
        elif tag == "div" and kind.startswith("text"):
            self.into = self.texts
            self.texts.append((kind, self.folded, ""))
        elif (tag, kind) in (("div", "source"), ("summary", "")):
            self.into = self.sources if tag == "div" else self.summaries
            self.into.append("")

    def handle_endtag(self, tag):
        self.folded = self.folded and tag != "details"
        if tag in ("div", "summary"):
            self.into = None

    def handle_data(self, data):
        if self.into is self.texts:
            kind, folded, text = self.texts[-1]
            self.texts[-1] = (kind, folded, text + data)
        elif self.into is not None:
            self.into[-1] += data


def test_report_shows_mix_lengths_rejections_coverage_and_a_sample(
    run, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "report.html"
    code, stdout, err = run_cli(["report", run, "-o", out], capsys, monkeypatch)
    assert code == 0, err
    tasks = store_tasks(run)
    assert f"report of {len(tasks)} samples ({len(tasks)} shown; run finished)" in stdout
    html = out.read_text(encoding="utf-8")
    page = Page(html)
    assert page.charts == CHARTS and page.scripts == 1
    assert Counter(page.rows) == Counter((t["task_type"], t["status"]) for t in tasks)
    by_type = Counter((t["task_type"], t["status"]) for t in tasks)
    for kind in ("ynqa", "nli", "exqa"):
        row = [by_type[kind, status] for status in ("accepted", "duplicate", "rejected")]
        assert f"<tr><td>{kind}</td>" + "".join(f"<td>{n}</td>" for n in row) in html
    accepted = [t for t in tasks if t["status"] == "accepted"]
    documents = len({t["document"] for t in accepted})
    assert f"documents with accepted tasks</th><td>{documents}/17 ({documents / 17:.1%})" in html
    contexts = len({t["context_id"] for t in accepted})
    assert f"contexts with accepted tasks</th><td>{contexts}/17 ({contexts / 17:.1%})" in html
    for reason, number in Counter(t["reason"] for t in tasks if t["status"] == "rejected").items():
        assert f"<title>{reason}, samples: {number}</title>" in html
    assert f'<p class="caption">{len(accepted)} values, median' in html
    assert f'<p class="caption">{len(tasks)} values, median' in html
    assert sorted(page.passages) == sorted(t["context"] for t in tasks)
    assert sorted(page.sources) == sorted(source_line(t["document"], t["source"]) for t in tasks)
    assert "chars 0-" in page.sources[0] and '"span"' not in html and "&#34;span&#34;" not in html
    quoting = [t for t in tasks if t["input"] and t["context"] in t["input"]]
    assert quoting and sorted(page.summaries) == sorted(
        f"passage ({len(t['context']):,} chars)" for t in quoting
    )


def test_user_text_is_escaped(page):
    _, html = page
    parsed = Page(html)
    assert HOSTILE in parsed.passages and parsed.scripts == 1
    assert "<img" not in html and "window.pwned = 1</script>" not in html


FOLDED = "The mill </details><script>window.pwned = 3</script> turns </div></td> all day."


def test_the_instruction_folds_the_passage_it_quotes(tmp_path):
    """The passage an instruction quotes is folded away, hostile text and all, the generated
    text around it shown in full; an instruction that does not quote it is shown whole; the
    source reads as words."""
    run = tmp_path / "run"
    run.mkdir()
    store = RunStore(run / "run.sqlite")
    store.put("config", make_config())
    source = {"file": "mill.pdf", "document": "mill.pdf", "span": [9144, 10152], "pages": [3, 4]}
    store.add_contexts(
        [(0, "mill.pdf", source | {"title": "Mills"}, FOLDED, 20)],
        [PlannedRequest(0, 0, 0, "ynqa", 0), PlannedRequest(0, 1, 0, "nli", 1)],
    )
    quoting = f"Read this passage.\n\n{FOLDED}\n\nDoes the mill turn at night?"
    whole = "Does a mill grind wheat?"
    store.save(
        [
            SavedSample(1, 0, "c", "stop", 9, 9, quoting, "no", "accepted", None),
            SavedSample(2, 0, "c", "stop", 9, 9, whole, "yes", "accepted", None),
        ],
        1.0,
    )
    store.close()
    page = Page(write_report(run).path.read_text(encoding="utf-8"))
    assert page.scripts == 1 and page.summaries == [f"passage ({len(FOLDED)} chars)"]
    shown = [(folded, text) for kind, folded, text in page.texts if kind == "text"]
    assert shown == [  # nli first, then ynqa
        (False, "Does a mill grind wheat?"),
        (False, "yes"),
        (False, "Read this passage."),
        (True, FOLDED),
        (False, "Does the mill turn at night?"),
        (False, "no"),
    ]
    assert page.passages == [FOLDED, FOLDED]
    assert page.sources == ["mill.pdf · “Mills” · p. 3-4 · chars 9144-10152"] * 2


def test_source_line_reads_as_words():
    assert source_line("a.txt", {"file": "a.txt", "document": "a.txt", "span": [0, 9]}) == (
        "a.txt · chars 0-9"
    )
    row = {"file": "t.jsonl", "document": "t.jsonl:3", "span": [5, 9], "row": 3}
    assert source_line("t.jsonl:3", row) == "t.jsonl · row 3 · chars 5-9"
    pdf = {"file": "p.pdf", "document": "p.pdf", "span": [1, 2], "pages": [7], "lang": "en"}
    assert source_line("p.pdf", pdf) == "p.pdf · p. 7 · chars 1-2 · lang en"
    assert source_line("doc", {"file": "dir", "span": [0, 1]}) == "dir (doc) · chars 0-1"


def test_default_output_and_mistakes(run, tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(["report", run, "--sample", 5], capsys, monkeypatch)
    assert code == 0, err
    assert len(Page((run / "report.html").read_text()).rows) == 5
    for args, message in [
        (["report", tmp_path], "is not a bonito run (it has no run.sqlite)"),
        (["report", run, "--sample", 0], "sample_size (--sample) must be at least 1"),
        (["report", run, "-o", tmp_path], "is a folder; give the HTML file to write"),
        (
            ["report", run, "-o", run / "run.sqlite" / "r.html"],
            f"Cannot write in {run / 'run.sqlite'}: it is a file, not a folder; choose a writable",
        ),
    ]:
        code, _, err = run_cli(args, capsys, monkeypatch)
        assert code == 1 and message in err and "Traceback" not in err, (args, err)


@pytest.mark.heavy
def test_report_of_100k_tasks_is_bounded_even_and_deterministic(tmp_path, capsys, monkeypatch):
    run = tmp_path / "big"
    make_store(run, contexts=1000, per_request=50)
    first, second = tmp_path / "a.html", tmp_path / "b.html"
    for out in (first, second):
        assert run_cli(["report", run, "-o", out], capsys, monkeypatch)[0] == 0
    html = first.read_text()
    assert html == second.read_text()
    assert len(html) < 1_500_000
    page = Page(html)
    assert page.charts == CHARTS
    assert sorted(Counter(page.rows).values()) == [33, 33, 33, 33, 34, 34]
    assert '<p class="caption">100000 values, median' in html
    assert "documents with accepted tasks</th><td>200/200 (100.0%)" in html


def test_report_of_a_stopped_run_and_of_one_still_going(
    tokenizer_model, scripted, tmp_path, capsys, monkeypatch
):
    run = generate_passages_run(tokenizer_model, tmp_path, "--max-tasks", 2)
    out = tmp_path / "report.html"
    assert run_cli(["report", run, "-o", out], capsys, monkeypatch)[0] == 0
    html = out.read_text()
    assert "This run is not finished (stopped: max_tasks (--max-tasks) 2 reached)" in html
    assert Page(html).charts == CHARTS
    with FileLock(run / "run.lock"):  # what a `bonito generate` at work holds
        code, stdout, err = run_cli(["report", run, "-o", out], capsys, monkeypatch)
    assert code == 0, err
    assert "run running" in stdout
    html = out.read_text()
    assert "This run is not finished (running)" in html and "<th>eta</th>" in html

    empty = tmp_path / "empty"
    empty.mkdir()
    store = RunStore(empty / "run.sqlite")
    store.put("config", make_config())
    store.close()
    code, stdout, err = run_cli(["report", empty, "-o", out], capsys, monkeypatch)
    assert code == 0, err
    html = out.read_text()
    page = Page(html)
    assert page.rows == [] and html.count("no data yet") == 4
    assert "interrupted" in html


def test_fair_shares_sampling_and_histograms():
    assert fair_shares({"a": 3, "b": 100, "c": 100}, 200) == {"a": 3, "b": 98, "c": 99}
    assert fair_shares({"a": 3, "b": 4}, 200) == {"a": 3, "b": 4}
    draws = []
    for seed in (1, 1, 2):
        sample = StratifiedSample(10, seed)
        for i in range(10_000):
            sample.add(i % 3 == 0, i)
        draws.append(sample.pick())
    assert draws[0] == draws[1] != draws[2]
    assert [i % 3 == 0 for i in draws[0]] == [False] * 5 + [True] * 5
    assert max(draws[0]) > 5_000  # from the whole stream, not its start
    values = list(range(1000)) + [10**6]
    bins = histogram(values)
    assert sum(b.count for b in bins) == len(values) and len(bins) <= 21
    assert bins[-1].high is None and bins[-1].count >= 1 and bins[0].low == 0
    assert [b.count for b in histogram([7, 7, 7])] == [3]
    assert histogram([]) == []


@needs_selenium
@needs_chromium
def test_report_in_headless_chromium(browser, page, run):
    """It renders, its charts have a size and bars, the table has rows and filters them, a
    folded passage opens on a click, the hostile passage ran nothing, nothing was fetched and
    the console stayed empty."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.get(page[0].as_uri())
    assert browser.execute_script("return document.readyState") == "complete"
    assert browser.title == f"bonito report: {run.name}"
    charts = browser.find_elements(By.CSS_SELECTOR, "svg.chart")
    assert len(charts) == CHARTS
    for chart in charts:
        assert chart.size["width"] > 0 and chart.size["height"] > 0
        assert chart.find_elements(By.TAG_NAME, "rect")
    rows = browser.find_elements(By.CSS_SELECTOR, "#sample tbody tr")
    assert len(rows) == len(store_tasks(run)) and rows[0].is_displayed()
    folded = browser.find_element(By.CSS_SELECTOR, "details.fold .text")
    assert not folded.is_displayed()
    browser.find_element(By.CSS_SELECTOR, "details.fold summary").click()
    assert folded.is_displayed()
    Select(browser.find_element(By.ID, "filter-type")).select_by_visible_text("nli")
    shown = [row for row in rows if row.is_displayed()]
    assert shown and all(row.get_attribute("data-type") == "nli" for row in shown)
    assert browser.find_element(By.ID, "shown").text == str(len(shown))
    assert browser.execute_script("return window.pwned === undefined")
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    assert browser.get_log("browser") == []


def test_coverage_of_a_limited_run_counts_the_documents_it_used(
    tokenizer_model, scripted, tmp_path, capsys, monkeypatch
):
    run = generate_passages_run(tokenizer_model, tmp_path, "--limit", 4)
    out = tmp_path / "report.html"
    assert run_cli(["report", run, "-o", out], capsys, monkeypatch)[0] == 0
    accepted = [t for t in store_tasks(run) if t["status"] == "accepted"]
    documents = len({t["document"] for t in accepted})
    html = out.read_text(encoding="utf-8")
    assert f"documents with accepted tasks</th><td>{documents}/4 (" in html
