"""`bonito review`: the review server as a process (killed and started again), its endpoints, its
guards against other sites, a page of hostile passages and 20 tasks reviewed with the keyboard in
Debian's chromium, on a finished run and on one that `bonito generate` is still writing; and the
decisions as `bonito export`, `bonito status` and the report apply and count them.

The runs are real `bonito generate` runs of the openai engine against a small bonito-format
completion server here (its answers paced by the test), so a run can be held generating."""

import json
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from helpers import (
    BONITO,
    HOSTILE,
    bonito,
    example_texts,
    make_store,
    needs_chromium,
    needs_selenium,
    run_cli,
    store_tasks,
)
from servers import http_server

from bonito.engines.openai import PROBE_PROMPT
from bonito.publish.review.queue import draw_sample
from bonito.runs.reviews import Decision, decide, reviewed_tasks, tally, wilson
from bonito.runs.store import RunStore

TRICKS = " {{ 7 * 7 }} {% if true %}templated{% endif %}"
DOCUMENTS = 30


class Gate:
    """How many completion requests the server may answer; the rest wait."""

    def __init__(self) -> None:
        self.condition = threading.Condition()
        self.allowed, self.served = 0, 0

    def allow(self, count: float) -> None:
        with self.condition:
            self.allowed = count
            self.condition.notify_all()

    def enter(self) -> None:
        with self.condition:
            self.condition.wait_for(lambda: self.served < self.allowed)
            self.served += 1


def completion(prompt: str) -> str:
    """A bonito-format task for the prompt's passage, "Note N. ...": ynqa answers yes (every
    third: maybe, which the checks reject), exqa the passage's first words (every fourth: words
    not in it)."""
    pattern = r"<\|tasktype\|>\n(.*)\n<\|context\|>\n(.*)\n<\|task\|>"
    kind, passage = re.search(pattern, prompt, re.S).groups()
    number = int(re.match(r"Note (\d+)", passage).group(1))
    if "yes" in kind.lower():
        answer = "Maybe" if number % 3 == 0 else "Yes"
        return f"{{{{context}}}}\n\nIs note {number} about daily life?<|pipe|>{answer}"
    answer = " ".join(passage.split()[2:5]) if number % 4 else "a red balloon"
    return f"{{{{context}}}}\n\nWhich words follow the note's number?<|pipe|>{answer}"


def generator_server(gate: Gate) -> type[BaseHTTPRequestHandler]:
    class Completions(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            self.reply({"data": [{"id": "stub"}]})

        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if request["prompt"] == PROBE_PROMPT:
                return self.reply({"choices": [{"text": "x", "finish_reason": "length"}]})
            gate.enter()
            text = completion(request["prompt"])
            choice = {"text": text, "index": 0, "finish_reason": "stop"}
            self.reply(
                {"choices": [choice], "usage": {"prompt_tokens": 90, "completion_tokens": 20}}
            )

        def reply(self, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Completions


def write_passages(folder: Path) -> Path:
    texts = example_texts()
    lines = [{"text": f"Note {i}. {texts[i % len(texts)]}"} for i in range(DOCUMENTS)]
    lines.append({"text": f"Note {DOCUMENTS}. {HOSTILE}{TRICKS}"})
    path = folder / "passages.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def generate_args(model: Path, folder: Path, url: str) -> list:
    return [
        "generate",
        write_passages(folder),
        *("-t", "ynqa", "-t", "exqa", "--model", model, "--engine", "openai"),
        *("--base-url", url, "--concurrency", "4", "--seed", 3, "--output", folder / "run"),
    ]


@pytest.fixture(scope="module")
def finished_run(tiny_model, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("review")
    gate = Gate()
    gate.allow(float("inf"))
    with http_server(generator_server(gate)) as url:
        bonito(*generate_args(tiny_model, folder, url))
    return folder / "run"


@pytest.fixture
def small_run(tmp_path) -> Path:
    """A run store of 10 contexts, each asked for ynqa and nli, written through RunStore."""
    make_store(tmp_path / "run", 10, 1)
    return tmp_path / "run"


class Server:
    """`bonito review` as a process: its URL, the lines it wrote on stderr, and a kill."""

    def __init__(self, run: Path, *options) -> None:
        self.process = subprocess.Popen(
            [*BONITO, "review", str(run), *map(str, options)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.process.stdout.readline()
        found = re.search(r"(http://\S+)", line)
        assert found, f"no URL in {line!r}: {self.process.stderr.read()}"
        self.url = found.group(1)
        self.root = re.sub(r"\?.*", "", self.url)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self.process.stdout.close()
        self.process.stderr.close()


@contextmanager
def serving(run: Path, *options):
    server = Server(run, *options)
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.kill()


def call(url: str, body: dict | None = None, headers: dict | None = None, method: str = ""):
    """(status, headers, JSON or text) of a request; a write by default as the page sends it."""
    data = None if body is None else json.dumps(body).encode()
    sent = {"Content-Type": "application/json", "X-Bonito-Review": "1"} if data else {}
    request = urllib.request.Request(
        url, data=data, headers=sent | (headers or {}), method=method or None
    )
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=10) as answer:
            status, got, text = answer.status, answer.headers, answer.read().decode()
    except urllib.error.HTTPError as error:
        status, got, text = error.code, error.headers, error.read().decode()
    try:
        return status, got, json.loads(text)
    except ValueError:
        return status, got, text


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args):
        return None


def test_every_endpoint(small_run):
    tasks = store_tasks(small_run)
    first, second = tasks[0]["id"], tasks[1]["id"]
    with serving(small_run) as server:
        root = server.root
        status, headers, _ = call(root)
        assert status == 303 and headers["location"] == f"/task/{first}"
        status, headers, _ = call(root + "?type=nli&status=rejected")
        nli = [t for t in tasks if (t["task_type"], t["status"]) == ("nli", "rejected")]
        assert headers["location"] == f"/task/{nli[0]['id']}?type=nli&status=rejected"
        status, headers, page = call(f"{root}task/{first}")
        assert status == 200 and "script-src 'self'" in headers["content-security-policy"]
        assert f'data-task="{first}"' in page and f'href="/task/{second}"' in page
        assert '0</strong> of <strong id="total">20</strong> reviewed' in page
        assert call(f"{root}task/999-0")[0] == 404 and call(f"{root}task/nonsense")[0] == 404
        status, _, task = call(f"{root}api/tasks/{first}")
        assert status == 200 and task["passage"] == tasks[0]["context"]
        assert task["decision"] is None and task["status"] == tasks[0]["status"]
        status, headers, script = call(f"{root}static/review.js")
        assert (
            status == 200 and "X-Bonito-Review" in script and "content-security-policy" in headers
        )

        status, _, saved = call(f"{root}api/tasks/{first}/decision", {"decision": "accepted"})
        assert status == 200 and saved["next"] == f"/task/{second}"
        assert saved["decision"]["decision"] == "accepted"
        edit = {"decision": "accepted", "output": "no", "input": None}
        assert call(f"{root}api/tasks/{second}/decision?type=nli", edit)[0] == 200
        status, _, task = call(f"{root}api/tasks/{second}")
        assert task["output"] == "no" and task["decision"]["output"] == "no"
        for wrong in (
            {"decision": "rejected"},
            {"decision": "rejected", "reason": "  "},
            {"decision": "maybe"},
            {"decision": "rejected", "reason": "x", "output": "edited"},
            {"decision": "accepted", "input": 3},
            {},
        ):
            status, _, answer = call(f"{root}api/tasks/{first}/decision", wrong)
            assert status == 400 and "decision" in answer["error"], wrong
        assert call(f"{root}api/tasks/999-0/decision", {"decision": "accepted"})[0] == 404
        status, _, progress = call(f"{root}api/progress")
        assert (progress["total"], progress["reviewed"]) == (20, 2)
        assert progress["review"]["kept"] + progress["review"]["rescued"] == 2

        status, _, undone = call(f"{root}api/undo", {})
        assert status == 200 and undone == {"task": second, "url": f"/task/{second}"}
        status, _, task = call(f"{root}api/tasks/{second}")
        assert task["decision"] is None and task["output"] == tasks[1]["output"]
        assert call(f"{root}api/undo", {})[2]["task"] == first
        assert call(f"{root}api/undo", {})[2] == {"task": None, "url": "/"}


def test_writes_and_reads_from_another_site_are_refused(small_run):
    """A page of another site can neither write (no custom header without a preflight, its
    Origin, a form's content type) nor read through a name rebound to 127.0.0.1."""
    first = store_tasks(small_run)[0]["id"]
    with serving(small_run) as server:
        url = f"{server.root}api/tasks/{first}/decision"
        port = server.root.rsplit(":", 1)[1].strip("/")
        body = {"decision": "accepted"}
        for headers in (
            {"X-Bonito-Review": "0"},
            {"Origin": "http://evil.example"},
            {"Content-Type": "text/plain"},
            {"Host": f"evil.example:{port}"},
        ):
            status, _, answer = call(url, body, headers)
            assert status == 403 and answer["error"].endswith("."), headers
        status, _, answer = call(server.root, headers={"Host": f"rebound.example:{port}"})
        assert status == 403 and "answers only at 127.0.0.1" in answer["error"]
        assert call(url, body, {"Origin": server.root.rstrip("/")})[0] == 200
        assert call(url.replace("127.0.0.1", "localhost"), body)[0] == 200
    store = RunStore(small_run / "run.sqlite", readonly=True)
    assert tally(store).reviewed == 1
    store.close()


def test_beyond_loopback_every_request_needs_the_token(small_run):
    with serving(small_run, "--host", "0.0.0.0") as server:
        token = re.search(r"token=([\w-]+)", server.url).group(1)
        local = server.url.replace("0.0.0.0", "127.0.0.1")
        root = local.split("?")[0]
        assert "beyond this machine" in server.process.stderr.readline()
        assert call(root)[0] == 403 and call(f"{root}static/review.css")[0] == 403
        assert call(f"{root}?token=wrong")[0] == 403
        status, headers, _ = call(local)
        assert status == 303 and headers["location"].endswith(f"?token={token}")
        status, _, page = call(root + headers["location"].lstrip("/"))
        assert status == 200 and f'data-token="{token}"' in page
        assert f"review.js?token={token}" in page
        first = store_tasks(small_run)[0]["id"]
        url = f"{root}api/tasks/{first}/decision"
        assert call(url, {"decision": "accepted"})[0] == 403
        assert call(url, {"decision": "accepted"}, {"X-Bonito-Token": token})[0] == 200


def test_mistakes_are_one_sentence(small_run, tmp_path, capsys, monkeypatch):
    def refused(*args) -> str:
        code, out, err = run_cli(["review", *args], capsys, monkeypatch)
        assert code == 1 and out == "" and err.count("\n") == 1, err
        return err

    documents = tmp_path / "documents"
    documents.mkdir()
    assert "is not a bonito run (it has no run.sqlite)" in refused(documents)
    assert "sample (--sample) must be at least 1" in refused(small_run, "--sample", "0")
    with serving(small_run) as server:
        port = server.root.rsplit(":", 1)[1].strip("/")
        assert f"Port {port} on 127.0.0.1 is in use; pass another port (--port)" in refused(
            small_run, "--port", port
        )
    assert "host (--host) no.such.host. is not an address of this machine" in refused(
        small_run, "--host", "no.such.host."
    )
    newer = tmp_path / "newer"
    make_store(newer, 2, 1)
    with sqlite3.connect(newer / "run.sqlite") as db:
        db.execute("PRAGMA user_version = 99")
    assert "was written by a newer bonito (store version 99" in refused(newer)
    assert "upgrade bonito" in run_cli(["status", newer], capsys, monkeypatch)[2]


def test_an_older_store_gets_its_reviews_table_and_nothing_else(small_run):
    """A store of a bonito before reviews: read-only readers see no reviews, and the review
    server adds the table, saying so in one sentence."""
    with sqlite3.connect(small_run / "run.sqlite") as db:
        db.executescript("DROP VIEW decisions; DROP TABLE reviews; PRAGMA user_version = 0")
        before = db.execute("SELECT * FROM tasks ORDER BY seq").fetchall()
    store = RunStore(small_run / "run.sqlite", readonly=True)
    assert not store.has_reviews and tally(store).reviewed == 0
    store.close()
    assert "reviewed" not in json.dumps(store_tasks(small_run))
    with serving(small_run) as server:
        assert call(server.root)[0] == 303
        note = server.process.stderr.readline()
        assert "written by an older bonito; the reviews table is added" in note
    with sqlite3.connect(small_run / "run.sqlite") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
        assert db.execute("SELECT * FROM tasks ORDER BY seq").fetchall() == before


def test_wilson_interval():
    assert wilson(0, 0) == (0.0, 1.0)
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)


def test_sample_is_seeded_stratified_and_walked_alone(small_run, tmp_path):
    make_store(tmp_path / "big", 60, 1)
    store = RunStore(tmp_path / "big" / "run.sqlite", readonly=True)
    sample = draw_sample(store, 12, 0)
    assert sample == draw_sample(store, 12, 0) and sample != draw_sample(store, 12, 1)
    kinds = {t["id"]: (t["task_type"], t["status"]) for t in store.tasks()}
    store.close()
    strata = [kinds[task] for task in sample]
    assert len(sample) == 12 and set(strata) == {
        (kind, status) for kind in ("ynqa", "nli") for status in ("accepted", "rejected")
    }
    assert all(strata.count(stratum) == 3 for stratum in set(strata))
    with serving(tmp_path / "big", "--sample", 12) as server:
        assert "a seeded sample of 12 tasks" in server.process.stderr.readline().lower()
        assert call(f"{server.root}api/progress")[2]["total"] == 12
        walked, url = [], call(server.root)[1]["location"]
        while url:
            walked.append(url.split("/")[-1])
            page = call(server.root + url.lstrip("/"))[2]
            url = (re.search(r'id="next" href="([^"]+)"', page) or [None, None])[1]
        assert walked == sample


def test_export_status_and_report_apply_and_count_the_decisions(
    small_run, tmp_path, capsys, monkeypatch
):
    tasks = store_tasks(small_run)
    accepted = [t for t in tasks if t["status"] == "accepted"]
    others = [t for t in tasks if t["status"] != "accepted"]
    store = RunStore(small_run / "run.sqlite")
    decide(store, accepted[0]["id"], Decision("rejected", reason="wrong answer"))
    decide(store, accepted[1]["id"], Decision("accepted", output="EDITED"))
    decide(store, accepted[1]["id"], Decision("accepted"))  # an accept keeps the edit
    decide(store, others[0]["id"], Decision("accepted"))
    decide(store, others[1]["id"], Decision("rejected", reason="still wrong"))
    found = tally(store)
    store.close()
    assert found.line() == "4 (kept 1, 1 edited; rejected 2; rescued 1)"

    out = tmp_path / "export"
    assert run_cli(["export", small_run, "-o", out], capsys, monkeypatch)[0] == 0
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    wanted = [t["id"] for t in tasks if t in accepted[1:] or t is others[0]]
    assert [row["id"] for row in rows] == wanted
    assert rows[wanted.index(accepted[1]["id"])]["output"] == "EDITED"
    card = (out / "README.md").read_text()
    assert "4 samples were reviewed by a person (`bonito review`): 1 kept, 2 rejected" in card
    assert "1 rescued" in card and "1 of those accepted were edited" in card

    only = tmp_path / "only"
    assert (
        run_cli(["export", small_run, "-o", only, "--reviewed-only"], capsys, monkeypatch)[0] == 0
    )
    rows = [json.loads(line) for line in (only / "train.jsonl").read_text().splitlines()]
    assert sorted(row["id"] for row in rows) == sorted([accepted[1]["id"], others[0]["id"]])
    assert "(--reviewed-only)" in (only / "README.md").read_text()

    code, out_text, _ = run_cli(["status", small_run], capsys, monkeypatch)
    assert code == 0 and "4 (kept 1, 1 edited; rejected 2; rescued 1)" in out_text
    assert "precision" in out_text and "95% interval" in out_text
    facts = json.loads(run_cli(["status", small_run, "--json"], capsys, monkeypatch)[1])
    assert facts["reviews"]["reviewed"] == 4 and set(facts["reviews"]["by_type"]) <= {"ynqa", "nli"}
    report = tmp_path / "report.html"
    assert run_cli(["report", small_run, "-o", report], capsys, monkeypatch)[0] == 0
    html = report.read_text()
    assert "<h2>Human review</h2>" in html and "4 (kept 1, 1 edited; rejected 2; rescued 1)" in html


def test_reviewed_only_without_reviews_is_one_sentence(small_run, tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(
        ["export", small_run, "-o", tmp_path / "x", "--reviewed-only"], capsys, monkeypatch
    )
    assert code == 1 and "has no task a person accepted yet: review it with `bonito review`" in err


def test_reviewed_tasks_merges_rescued_ones_in_run_order():
    def task(request, status):
        return {"id": f"{request}-0", "request_id": request, "sample_index": 0, "status": status}

    accepted, others = [task(1, "accepted"), task(4, "accepted")], [task(2, "rejected")]
    decided = {"2-0": Decision("accepted", output="fixed"), "4-0": Decision("rejected", reason="x")}
    got = list(reviewed_tasks(iter(accepted), iter(others), decided))
    assert [(t["id"], t.get("output")) for t in got] == [("1-0", None), ("2-0", "fixed")]
    assert [t["id"] for t in reviewed_tasks(accepted, others, decided, reviewed_only=True)] == [
        "2-0"
    ]


# the browser


def press(browser, *keys) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    for key in keys:
        ActionChains(browser).send_keys(key).perform()


def wait_for_page(browser, before: float | None = None) -> float:
    """Wait for a page other than `before` (a page's time origin) to be loaded; its origin."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    def loaded(_) -> float | None:
        try:
            origin = browser.execute_script(
                "return document.readyState === 'complete' && document.getElementById('task') "
                "? performance.timeOrigin : null"
            )
        except WebDriverException:  # between two pages
            return None
        return origin if origin not in (None, before) else None

    return WebDriverWait(browser, 15).until(loaded)


def task_shown(browser) -> tuple[str, str]:
    """The task the page shows, and the decision it shows for it."""
    from selenium.webdriver.common.by import By

    section = browser.find_element(By.ID, "task")
    return section.get_attribute("data-task"), section.get_attribute("data-decision")


def review_twenty(browser, url: str) -> dict[str, tuple]:
    """Review 20 tasks with the keyboard from the first to review: accept most, edit the fifth
    answer, reject the eighth with a reason typed and the tenth with a listed one, undo the
    eleventh and decide it again; the decisions by task id."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(url)
    page, decided = wait_for_page(browser), {}
    while len(decided) < 20:
        task, decision = task_shown(browser)
        assert decision == ""
        step = len(decided)
        if step == 4:
            press(browser, "e")
            answer = browser.find_element(By.ID, "edit-output")
            assert answer.is_displayed()
            answer.clear()
            answer.send_keys("EDITED ANSWER", Keys.CONTROL + Keys.ENTER)
            decided[task] = ("accepted", "EDITED ANSWER", None)
        elif step == 7:
            press(browser, "r", "5")
            browser.find_element(By.ID, "reason-text").send_keys("made up by the model", Keys.ENTER)
            decided[task] = ("rejected", None, "made up by the model")
        elif step == 9:
            press(browser, "r", "1")
            decided[task] = ("rejected", None, "wrong answer")
        else:
            press(browser, "a")
            decided[task] = ("accepted", None, None)
        page = wait_for_page(browser, page)
        if step == 10:
            press(browser, "u")
            page = wait_for_page(browser, page)
            assert task_shown(browser) == (task, "")
            assert browser.find_element(By.ID, "decision").text == "not reviewed"
            press(browser, "a")
            page = wait_for_page(browser, page)
    return decided


def check_decisions(root: str, decided: dict[str, tuple]) -> None:
    """The server has each decision, with its edit and reason."""
    for task, (decision, output, reason) in decided.items():
        shown = call(f"{root}api/tasks/{task}")[2]
        assert shown["decision"]["decision"] == decision and shown["decision"]["reason"] == reason
        assert shown["decision"]["output"] == output
        if output:
            assert shown["output"] == output


def check_export(run: Path, out: Path, decided: dict[str, tuple]) -> None:
    """The export holds the run's accepted tasks less those rejected here, plus those rescued
    here, with the edit."""
    bonito("export", run, "-o", out)
    rows = {row["id"]: row for row in map(json.loads, (out / "train.jsonl").open())}
    status = {t["id"]: t["status"] for t in store_tasks(run)}
    expected = {
        task
        for task, state in status.items()
        if (decided[task][0] == "accepted" if task in decided else state == "accepted")
    }
    assert set(rows) == expected and any(status[t] != "accepted" for t in decided if t in rows)
    for task, (_, output, _) in decided.items():
        if output:
            assert rows[task]["output"] == output
    assert "20 samples were reviewed by a person" in (out / "README.md").read_text()


@needs_selenium
@needs_chromium
def test_review_a_finished_run_in_chromium(browser, finished_run, tmp_path):
    from selenium.webdriver.common.by import By

    run = finished_run
    with serving(run) as server:
        decided = review_twenty(browser, server.url)
        assert "20</strong> of <strong" in browser.page_source
        assert browser.find_element(By.ID, "precision").is_displayed()
        server.kill()
    with serving(run) as server:
        check_decisions(server.root, decided)
        edited = next(task for task, (_, output, _) in decided.items() if output)
        browser.get(f"{server.root}task/{edited}")
        assert browser.find_element(By.ID, "decision").text == "you accepted (edited)"
        assert browser.find_element(By.ID, "answer").text == "EDITED ANSWER"

        # a hostile passage is text: its markup and template syntax shown, nothing run
        browser.get(f"{server.root}?q=window.pwned&type=exqa")
        wait_for_page(browser)
        passage = browser.find_element(By.CSS_SELECTOR, ".passage").text
        assert "<script>window.pwned = 1</script>" in passage and TRICKS.strip() in passage
        assert 'onerror="window.pwned = 2"' in passage
        mark = browser.find_element(By.TAG_NAME, "mark").text
        assert mark and mark in passage
        browser.find_element(By.CSS_SELECTOR, "details.fold summary").click()
        assert browser.execute_script("return window.pwned === undefined")
        origins = browser.execute_script(
            "return performance.getEntriesByType('resource').map(e => new URL(e.name).origin)"
        )
        assert set(origins) == {server.root.rstrip("/")}
        assert [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"] == []
    check_export(run, tmp_path / "export", decided)


@needs_selenium
@needs_chromium
def test_review_a_run_still_generating(browser, tiny_model, tmp_path):
    gate = Gate()
    gate.allow(26)
    with http_server(generator_server(gate)) as url:
        generate = subprocess.Popen(
            [*BONITO, *map(str, generate_args(tiny_model, tmp_path, url))],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=os.environ | {"HF_HUB_OFFLINE": "1"},
        )
        try:
            run = tmp_path / "run"
            saved = lambda: len(store_tasks(run, "accepted", "rejected", "duplicate", "candidate"))  # noqa: E731
            wait_until(lambda: (run / "run.sqlite").exists() and saved() >= 26)
            with serving(run) as server:
                decided = review_twenty(browser, server.url)
                assert "still generating" in browser.page_source
                total = call(f"{server.root}api/progress")[2]["total"]
                gate.allow(40)
                wait_until(lambda: saved() >= 40)
                assert call(f"{server.root}api/progress")[2]["total"] > total
                server.kill()
            assert generate.poll() is None
            with serving(run) as server:
                check_decisions(server.root, decided)
            gate.allow(float("inf"))
            assert generate.wait(60) == 0, generate.stderr.read()
        finally:
            gate.allow(float("inf"))
            if generate.poll() is None:
                generate.kill()
            generate.wait(10)
            generate.stderr.close()
    check_export(run, tmp_path / "export", decided)


def wait_until(condition, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if condition():
                return
        except sqlite3.OperationalError:  # the store is being created
            pass
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
