"""The run report: one self-contained HTML file (no request leaves it: inline CSS, SVG charts
drawn here, a few lines of inline script) showing a run's task-type mix, length histograms,
rejection reasons, coverage of documents and contexts, and a browsable sample of tasks beside
their source passages. Works on a run that is still going or stopped; counts and histograms
cover every task, the browsable sample is bounded."""

from __future__ import annotations

import base64
import hashlib
import random
from collections import Counter, defaultdict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from markupsafe import Markup

from bonito import __version__
from bonito.errors import BonitoError
from bonito.prompt.sampling import derive_seed
from bonito.publish.export import RunView, generator_facts, open_run
from bonito.runs.reviews import tally
from bonito.runs.run import failed_note, summary_from
from bonito.runs.state import State
from bonito.util.outputs import OUTPUT, writable, written_whole

SAMPLE_SIZE = 200
BINS = 20
TAIL_FROM = 100
"""Histograms of this many values or more put the top 1% in an open last bin."""
STATUS_COLOURS = {"accepted": "#2e7d32", "duplicate": "#f9a825", "rejected": "#c62828"}
COVERAGE_COLOURS = {"with accepted tasks": "#1565c0", "without": "#cfd8dc"}
SCRIPT = """(() => {
  const type = document.getElementById("filter-type");
  const status = document.getElementById("filter-status");
  const text = document.getElementById("filter-text");
  const shown = document.getElementById("shown");
  const rows = Array.from(document.querySelectorAll("#sample tbody tr"));
  function apply() {
    const query = text.value.toLowerCase();
    let count = 0;
    for (const row of rows) {
      const keep = (!type.value || row.dataset.type === type.value)
        && (!status.value || row.dataset.status === status.value)
        && (!query || row.textContent.toLowerCase().includes(query));
      row.hidden = !keep;
      count += keep;
    }
    shown.textContent = count;
  }
  type.addEventListener("change", apply);
  status.addEventListener("change", apply);
  text.addEventListener("input", apply);
})();"""
"""Filters the sample table; the page's Content-Security-Policy lets only this script run."""


def fair_shares(sizes: Mapping[Hashable, int], total: int) -> dict[Hashable, int]:
    """`total` shared between strata as evenly as their sizes allow: the smallest take what
    they have, the rest is split evenly between the others."""
    shares, left = {}, total
    order = sorted(sizes, key=lambda key: (sizes[key], key))
    for position, key in enumerate(order):
        shares[key] = min(sizes[key], left // (len(order) - position))
        left -= shares[key]
    return shares


class StratifiedSample:
    """A seeded sample of at most `size` items in all, shared fairly between strata, each
    stratum sampled uniformly from a stream of any length (reservoir sampling)."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.rng = random.Random(seed)
        self.seen: Counter = Counter()
        self.reservoirs: dict[Any, list[Any]] = defaultdict(list)  # strata sort among themselves

    def add(self, stratum: Hashable, item: Any) -> None:
        self.seen[stratum] += 1
        reservoir = self.reservoirs[stratum]
        if len(reservoir) < self.size:
            reservoir.append(item)
        elif (slot := self.rng.randrange(self.seen[stratum])) < self.size:
            reservoir[slot] = item

    def pick(self) -> list[Any]:
        """The sample, stratum by stratum in sorted order."""
        shares = fair_shares({key: len(items) for key, items in self.reservoirs.items()}, self.size)
        return [
            item
            for key in sorted(self.reservoirs)
            for item in self.rng.sample(self.reservoirs[key], shares[key])
        ]


@dataclass(frozen=True)
class Bin:
    low: int
    high: int | None
    """None: the open last bin, every value from `low` up."""
    count: int

    @property
    def label(self) -> str:
        if self.high is None:
            return f"{self.low} or more"
        return str(self.low) if self.low == self.high else f"{self.low}-{self.high}"


def histogram(values: Sequence[int], bins: int = BINS) -> list[Bin]:
    """At most `bins` equal-width integer bins from the smallest value to the largest, or from
    TAIL_FROM values on to the 99th percentile, with an open last bin for the larger ones."""
    if not values:
        return []
    ordered = sorted(values)
    top = (len(ordered) - 1) * 99 // 100 if len(ordered) >= TAIL_FROM else -1
    low, high = ordered[0], ordered[top]
    width = -(-(high - low + 1) // bins)
    regular = -(-(high - low + 1) // width)
    counts = Counter((value - low) // width for value in values)
    edges = [Bin(low + i * width, low + (i + 1) * width - 1, counts[i]) for i in range(regular)]
    overflow = len(values) - sum(edge.count for edge in edges)
    if overflow:
        edges.append(Bin(low + regular * width, None, overflow))
    return edges


def describe(values: Sequence[int]) -> str:
    """Count, median, mean and largest value, for a histogram's caption."""
    if not values:
        return "none yet"
    ordered = sorted(values)
    mean = sum(ordered) / len(ordered)
    return (
        f"{len(ordered)} values, median {ordered[len(ordered) // 2]}, mean {mean:.1f}, "
        f"max {ordered[-1]}"
    )


def histogram_svg(bins: Sequence[Bin], unit: str, width: int = 360, height: int = 170) -> Markup:
    """Vertical bars, one per bin, each with a tooltip; the axes labelled at their ends."""
    if not bins:
        return Markup('<p class="empty">no data yet</p>')
    left, bottom, top = 44, 22, 8
    plot_w, plot_h = width - left - 6, height - bottom - top
    tallest = max(b.count for b in bins) or 1
    step = plot_w / len(bins)
    parts = [
        f'<svg class="chart" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 6}" y2="{top + plot_h}" '
        'stroke="#90a4ae"/>',
        f'<text x="{left - 4}" y="{top + 10}" text-anchor="end">{tallest}</text>',
        f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end">0</text>',
    ]
    for i, b in enumerate(bins):
        bar_h = plot_h * b.count / tallest
        parts.append(
            f'<rect x="{left + i * step + 1:.1f}" y="{top + plot_h - bar_h:.1f}" '
            f'width="{max(step - 2, 1):.1f}" height="{bar_h:.1f}" fill="#5c6bc0">'
            f"<title>{escape(b.label)} {escape(unit)}: {b.count}</title></rect>"
        )
    parts += [
        f'<text x="{left}" y="{height - 6}">{escape(bins[0].label)}</text>',
        f'<text x="{width - 6}" y="{height - 6}" text-anchor="end">'
        f"{escape(bins[-1].label)} {escape(unit)}</text>",
        "</svg>",
    ]
    return Markup("".join(parts))


def bar_svg(
    rows: Sequence[tuple[str, Sequence[int]]], series: Mapping[str, str], shares: bool = False
) -> Markup:
    """Horizontal bars, one per row, stacked by series (name: colour), with a tooltip per
    segment and a legend when there is more than one series. Bars are to one scale with the
    row's total at the end, or with `shares` each fills the width, with its first series' share
    at the end."""
    if not rows:
        return Markup('<p class="empty">none</p>')
    width, label_w, value_w, row_h = 560, 150, 60, 22
    legend_h = 22 if len(series) > 1 else 0
    height = legend_h + row_h * len(rows) + 4
    plot_w = width - label_w - value_w
    largest = max(sum(values) for _, values in rows) or 1
    parts = [
        f'<svg class="chart" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">'
    ]
    x: float
    if legend_h:
        x = label_w
        for name, colour in series.items():
            parts.append(
                f'<rect x="{x}" y="4" width="12" height="12" fill="{colour}"/>'
                f'<text x="{x + 16}" y="14">{escape(name)}</text>'
            )
            x += 24 + 7 * len(name)
    for i, (label, values) in enumerate(rows):
        y, x = legend_h + i * row_h, float(label_w)
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{escape(label)}</text>'
        )
        scale = (sum(values) or 1) if shares else largest
        for (name, colour), value in zip(series.items(), values, strict=True):
            bar_w = plot_w * value / scale
            parts.append(
                f'<rect x="{x:.1f}" y="{y + 3}" width="{bar_w:.1f}" height="{row_h - 6}" '
                f'fill="{colour}"><title>{escape(label)}, {escape(name)}: {value}</title></rect>'
            )
            x += bar_w
        end = f"{values[0] / scale:.1%}" if shares else str(sum(values))
        parts.append(f'<text x="{x + 6:.1f}" y="{y + 15}">{end}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


@dataclass
class RunStats:
    """What a pass over a run's tasks and one over its contexts give: counts by type and status,
    lengths, what has an accepted task, and the browsable sample."""

    sample: StratifiedSample
    by_type: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    input_words: list[int] = field(default_factory=list)
    output_words: list[int] = field(default_factory=list)
    completion_tokens: list[int] = field(default_factory=list)
    context_tokens: list[int] = field(default_factory=list)
    documents: set[str] = field(default_factory=set)
    contexts_with_tasks: set[int] = field(default_factory=set)
    documents_with_tasks: set[str] = field(default_factory=set)
    samples: int = 0

    def add_task(self, task: dict[str, Any]) -> None:
        self.samples += 1
        self.by_type[task["task_type"]][task["status"]] += 1
        self.completion_tokens.append(task["completion_tokens"])
        if task["status"] == "accepted":
            self.input_words.append(len(task["input"].split()))
            self.output_words.append(len(task["output"].split()))
            self.contexts_with_tasks.add(task["context_id"])
            self.documents_with_tasks.add(task["document"])
        shown = {key: value for key, value in task.items() if key != "context"}
        self.sample.add((task["task_type"], task["status"]), shown | {"position": self.samples})

    def add_context(self, context: dict[str, Any]) -> None:
        self.context_tokens.append(context["tokens"])
        self.documents.add(context["document"])


SHOWN_SOURCE = ("file", "document", "row", "title", "pages", "span")
"""The provenance keys `source_line` words itself; any other is shown as `key value`."""


def source_line(document: str, source: Mapping[str, Any]) -> str:
    """Where a passage came from, to read: the file (with the document when it is more than the
    file or its row), row, title, pages "p. 3-4", characters "chars 9144-10152", then the rest."""
    file, row = source.get("file", document), source.get("row")
    parts = [file if document in (file, f"{file}:{row}") else f"{file} ({document})"]
    if row is not None:
        parts.append(f"row {row}")
    if source.get("title"):
        parts.append(f"“{source['title']}”")
    if pages := source.get("pages"):
        parts.append(f"p. {pages[0]}" if len(pages) == 1 else f"p. {pages[0]}-{pages[-1]}")
    if span := source.get("span"):
        parts.append(f"chars {span[0]}-{span[1]}")
    parts += [f"{key} {value}" for key, value in source.items() if key not in SHOWN_SOURCE]
    return " · ".join(parts)


def fold(instruction: str | None, passage: str) -> tuple[str, str, str] | None:
    """The instruction around the passage it quotes, as (before, passage, after), to show the
    passage folded; None when the instruction does not quote it."""
    if not passage or not instruction or passage not in instruction:
        return None
    before, _, after = instruction.partition(passage)
    return before.rstrip(), passage, after.lstrip()


def gather(view: RunView, sample_size: int) -> tuple[RunStats, list[dict[str, Any]]]:
    """One pass over every task, then one over the contexts: the statistics, and the sampled
    tasks with their passages, by task type and status, then in run order."""
    stats = RunStats(StratifiedSample(sample_size, derive_seed(view.seed, "report")))
    for task in view.store.tasks():
        stats.add_task(task)
    sample = stats.sample.pick()
    wanted, texts = {task["context_id"] for task in sample}, {}
    for context in view.store.contexts():
        stats.add_context(context)
        if context["id"] in wanted:
            texts[context["id"]] = context["text"]
    rows = [
        table_row(task, texts.get(task["context_id"], ""))
        for task in sorted(sample, key=lambda t: (t["task_type"], t["status"], t["position"]))
    ]
    return stats, rows


def table_row(task: dict[str, Any], context: str) -> dict[str, Any]:
    """A sampled task as the sample table shows it: with its passage, where it came from in
    words, and its instruction folded around the passage."""
    return task | {
        "context": context,
        "source": source_line(task["document"], task["source"]),
        "fold": fold(task["input"], context),
    }


def charts(
    view: RunView, stats: RunStats, types: list[str], coverage: dict[str, tuple[int, int]]
) -> dict[str, Markup]:
    """The mix, rejection and coverage bar charts."""
    reasons = Counter(view.counts["rejected"])
    if view.counts["duplicates"]:
        reasons["duplicate"] = view.counts["duplicates"]
    return {
        "mix": bar_svg(
            [(kind, [stats.by_type[kind][s] for s in STATUS_COLOURS]) for kind in types],
            STATUS_COLOURS,
        ),
        "rejections": bar_svg(
            [(reason, [n]) for reason, n in reasons.most_common()], {"samples": "#c62828"}
        ),
        "coverage": bar_svg(
            [(name, [part, max(whole - part, 0)]) for name, (part, whole) in coverage.items()],
            COVERAGE_COLOURS,
            shares=True,
        ),
    }


def share(part: int, whole: int) -> str:
    return f"{part}/{whole} ({part / whole:.1%})" if whole else "0"


def report_context(view: RunView, sample_size: int) -> dict[str, Any]:
    """Everything the template shows."""
    stats, rows = gather(view, sample_size)
    mix = list(view.config["task_mix"])
    types = mix + sorted(set(stats.by_type) - set(mix))
    coverage = {  # with accepted tasks, of all
        "documents": (
            len(stats.documents_with_tasks),
            view.reading.get("documents") or len(stats.documents),
        ),
        "contexts": (len(stats.contexts_with_tasks), len(stats.context_tokens)),
    }
    lengths = [
        ("Instructions (accepted)", "words", stats.input_words),
        ("Answers (accepted)", "words", stats.output_words),
        ("Completions (every sample)", "tokens", stats.completion_tokens),
        ("Contexts", "tokens", stats.context_tokens),
    ]
    return {
        "title": f"bonito report: {view.folder.name}",
        "version": __version__,
        "status": view.status,
        "facts": generator_facts(view.config),
        "finished": view.state is State.FINISHED,
        "failures": failed_note(summary_from(view.reading, view.counts)),
        "coverage": {
            f"{name} with accepted tasks": share(*counts) for name, counts in coverage.items()
        },
        "mix_table": [(kind, *(stats.by_type[kind][s] for s in STATUS_COLOURS)) for kind in types],
        "charts": charts(view, stats, types, coverage),
        "histograms": [
            (title, histogram_svg(histogram(values), unit), describe(values))
            for title, unit, values in lengths
        ],
        "review": tally(view.store),
        "rows": rows,
        "samples": stats.samples,
        "seed": view.seed,
        "task_types": sorted({row["task_type"] for row in rows}),
        "statuses": [s for s in STATUS_COLOURS if any(r["status"] == s for r in rows)],
        "script": Markup(SCRIPT),
        "script_hash": base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode(),
    }


def render(context: dict[str, Any]) -> str:
    """The HTML page from the packaged template, every value escaped."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("bonito", "data"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template("report.html.j2").render(context)


@dataclass(frozen=True)
class Report:
    path: Path
    samples: int
    shown: int
    state: str


def write_report(run: Path, output: Path | None = None, sample_size: int = SAMPLE_SIZE) -> Report:
    """Write the report of the run folder `run` to `output` (default: RUN/report.html), with up
    to `sample_size` tasks to browse, stratified by task type and status, seeded by the run."""
    if sample_size < 1:
        raise BonitoError(f"sample_size (--sample) must be at least 1, got {sample_size}.")
    with open_run(run) as view:
        path = output or run / "report.html"
        if path.is_dir():
            raise BonitoError(f"{OUTPUT} {path} is a folder; give the HTML file to write.")
        context = report_context(view, sample_size)
    with writable(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        with written_whole(path) as file:
            file.write(render(context))
    return Report(path, context["samples"], len(context["rows"]), view.status["state"])
