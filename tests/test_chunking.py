"""Token-aware chunking with real tokenizers trained here: the two families bonito generators use
(byte-level BPE as in Llama 3 and the tiny model, SentencePiece-style BPE with byte fallback as
in Mistral)."""

import json
import random
import re
import subprocess
import sys
from collections import defaultdict
from itertools import islice
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from bonito import TASK_TYPES, BonitoError, build_prompt
from bonito.read.chunking import MARGIN, Chunker, Context
from bonito.read.sources import Document, Skip, read_documents

SHARED_DATA = Path(__file__).parents[2] / "shared" / "data"
WORDS = (
    "the a of and to in council library depot city river bridge water museum visitors roof "
    "architects historians spring year public reading rooms building region decision debate "
    "workers tenant landlord payment notice agreement party information disclosure purpose "
    "photosynthesis honeybees communicate flowers direction distance battery camera daylight "
    "indoors charger sourdough starter dough fridge crust harbour fleet mackerel shoals crews"
).split()


def sentence(rng: random.Random, words: int) -> str:
    text = " ".join(rng.choice(WORDS) for _ in range(words))
    return text[0].upper() + text[1:] + rng.choice(".....!?")


def paragraph(rng: random.Random, sentences: int) -> str:
    return " ".join(sentence(rng, rng.randint(3, 30)) for _ in range(sentences))


def prose(seed: int, paragraphs: int) -> str:
    rng = random.Random(seed)
    return "\n\n".join(paragraph(rng, rng.randint(1, 9)) for _ in range(paragraphs))


def corpus() -> list[Document]:
    """Documents of every shape: short and long, long paragraphs, a sentence longer than a
    context, lists, raw whitespace, CJK text without spaces, a heading before a long text."""
    rng = random.Random(7)
    texts = [
        "Hi there.",
        prose(1, 3),
        prose(2, 40),
        paragraph(rng, 80),
        "Intro.\n\n" + " ".join(rng.choice(WORDS) for _ in range(700)) + "\n\n" + prose(3, 2),
        "Items:\n" + "\n".join(f"- {sentence(rng, rng.randint(2, 9))}" for _ in range(90)),
        "  \t Raw   text\r\n\r\n\r\n" + prose(4, 6).replace(" ", "  ") + "  \n ",
        "これは日本語の文です。" * 200,
        "Heading\n\n" + paragraph(rng, 30),
    ]
    return [Document(f"doc{i}", text, f"doc{i}.txt") for i, text in enumerate(texts)]


def train(kind: str) -> PreTrainedTokenizerFast:
    special = ["<unk>", "<s>", "</s>"]
    if kind == "byte-level":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tokenizer = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(  # line breaks become bytes
            [pre_tokenizers.Split("\n", "isolated"), pre_tokenizers.Metaspace()]
        )
        tokenizer.decoder = decoders.Metaspace()
        special, alphabet = special + [f"<0x{i:02X}>" for i in range(256)], []
    trainer = trainers.BpeTrainer(
        vocab_size=len(special) + 600, special_tokens=special, initial_alphabet=alphabet
    )
    tokenizer.train_from_iterator([prose(seed, 20) for seed in range(100, 110)], trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


@pytest.fixture(scope="module", params=["byte-level", "sentencepiece"])
def tokenizer(request):
    return train(request.param)


def measure(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False).input_ids)


def at_word_edge(text: str, i: int) -> bool:
    return i in (0, len(text)) or text[i - 1].isspace() or text[i].isspace() or text[i - 1] in "。"


def check(tokenizer, chunker: Chunker, docs: list[Document], skipped=()) -> list[Context]:
    """Chunk `docs` and assert what must hold of every context; return the contexts. Only
    reasons in `skipped` may be skipped, and only the characters they name go unsent."""
    items = list(chunker.chunk(docs))
    skips = [item for item in items if isinstance(item, Skip)]
    assert {skip.reason for skip in skips} <= set(skipped), skips[:3]
    contexts = [c for c in items if isinstance(c, Context)]
    exact = tokenizer([c.text for c in contexts], add_special_tokens=False).input_ids
    by_doc = {doc.id: doc for doc in docs}
    for context, ids in zip(contexts, exact, strict=True):
        text = by_doc[context.document].text
        start, end = context.span
        assert text[start:end] == context.text == context.text.rstrip()
        indent = len(context.text) - len(context.text.lstrip())  # only a first line's own
        assert indent == 0 or (
            text[start - 1 : start] in ("", "\n") and "\n" not in text[start : start + indent]
        )
        assert at_word_edge(text, start) and at_word_edge(text, end), context
        assert len(ids) <= chunker.max_tokens
        assert abs(len(ids) - context.tokens) <= MARGIN
        whole = context.text == text.strip()
        assert whole or len(ids) >= chunker.min_tokens - MARGIN
        assert chunker.prompt_fits(context)
    spans, gaps = defaultdict(list), defaultdict(list)
    for context in contexts:
        spans[context.document].append(context.span)
    for skip in skips:
        gaps[skip.source].append(skip_span(skip))
    for doc in docs:  # every non-space character is sent, or skipped; only overlaps repeat
        covered, previous_end = 0, 0
        for start, end in spans[doc.id]:
            unsent = doc.text[covered:start]
            assert not unsent.strip() or any(a >= covered and b <= start for a, b in gaps[doc.id])
            assert start >= previous_end or chunker.overlap
            covered, previous_end = max(covered, end), end
        assert not doc.text[covered:].strip() or gaps[doc.id]
    return contexts


def skip_span(skip: Skip) -> tuple[int, int]:
    start, end = re.match(r"characters ([\d,]+)-([\d,]+)", skip.detail).groups()
    return int(start.replace(",", "")), int(end.replace(",", ""))


@pytest.mark.parametrize(("max_tokens", "min_tokens", "overlap"), [(64, 8, 0), (200, 32, 40)])
def test_contexts_fit_cover_the_text_and_point_at_it(tokenizer, max_tokens, min_tokens, overlap):
    chunker = Chunker(tokenizer, max_tokens=max_tokens, min_tokens=min_tokens, overlap=overlap)
    contexts = check(tokenizer, chunker, corpus())
    assert len({c.document for c in contexts}) == len(corpus())
    if overlap:
        pairs = [(a, b) for a, b in zip(contexts, contexts[1:], strict=False)]
        pairs = [(a, b) for a, b in pairs if a.document == b.document]
        overlapping = [(a, b) for a, b in pairs if b.span[0] < a.span[1]]
        assert len(overlapping) > len(pairs) / 2
        for a, b in overlapping:
            repeated = a.text[b.span[0] - a.span[0] :]
            assert b.text.startswith(repeated)
            assert measure(tokenizer, repeated) <= overlap + MARGIN


def test_cuts_go_at_paragraphs_then_sentences(tokenizer):
    chunker = Chunker(tokenizer, max_tokens=120, min_tokens=16)
    rng = random.Random(5)
    short = (" ".join(sentence(rng, rng.randint(3, 9)) for _ in range(3)) for _ in range(40))
    paragraphs = Document("p", "\n\n".join(short), "p")  # each fits in a context
    for context in check(tokenizer, chunker, [paragraphs])[:-1]:
        assert paragraphs.text[context.span[1] : context.span[1] + 2] == "\n\n"
    one_paragraph = Document("s", paragraph(random.Random(6), 60), "s")
    for context in check(tokenizer, chunker, [one_paragraph]):
        assert context.text[-1] in ".!?"


def test_whole_short_documents_are_kept_and_tails_are_not_left_short(tokenizer):
    chunker = Chunker(tokenizer, max_tokens=60, min_tokens=20)
    [short] = check(tokenizer, chunker, [Document("short", "Hi there.", "short.txt")])
    assert short.tokens < 20 and short.text == "Hi there."
    rng = random.Random(8)
    docs = [  # many end just past a context, with a short last piece to fold in
        Document(f"d{n}", " ".join(sentence(rng, 6) for _ in range(n)), "d") for n in range(1, 30)
    ]
    check(tokenizer, chunker, docs)


def test_a_run_without_breaks_longer_than_a_context_is_skipped_and_the_rest_kept(tokenizer):
    chunker = Chunker(tokenizer, max_tokens=50, min_tokens=1)
    text = prose(9, 2) + " " + "x" * 3000 + " " + prose(10, 2) + " " + "y" * 2_000_000
    items = list(chunker.chunk([Document("junk", text, "junk.txt")]))
    skips = [item for item in items if isinstance(item, Skip)]
    x = text.index("x" * 3000)
    assert [(s.reason, s.detail.split(" have")[0]) for s in skips] == [
        ("too_long_word", f"characters {x:,}-{x + 3000:,}"),
        ("too_long_word", f"characters {len(text) - 2_000_000:,}-{len(text):,}"),
    ]
    kept = " ".join(c.text for c in items if isinstance(c, Context))
    assert kept.split() == (prose(9, 2) + " " + prose(10, 2)).split()


def test_pages_come_from_the_page_map(tokenizer):
    pages = [prose(11, 3), prose(12, 3), "", prose(13, 3)]
    starts, offset = [], 0
    for number, page in enumerate(pages, start=1):
        starts.append([number, offset])
        offset += len(page) + 2 if page else 0
    text = "\n\n".join(p for p in pages if p)
    doc = Document("a.pdf", text, "a.pdf", {"pages": starts, "title": "A"})
    contexts = check(tokenizer, Chunker(tokenizer, max_tokens=80, min_tokens=8), [doc])
    assert {1, 2, 4} <= {n for c in contexts for n in c.pages}
    for context in contexts:
        start, end = context.span
        touched = [
            n for n, s in starts if pages[n - 1] and s < end and s + len(pages[n - 1]) > start
        ]
        assert context.pages == tuple(range(touched[0], touched[-1] + 1))
        assert context.provenance() == {
            "file": "a.pdf",
            "document": "a.pdf",
            "span": [start, end],
            "pages": list(context.pages),
            "title": "A",
        }


def test_a_text_files_contexts_keep_its_indentation_and_their_spans_index_it(tokenizer, tmp_path):
    code = "\n".join(f"    total_{i} = compute({i}, depth={i % 4})" for i in range(40))
    prose_text = prose(14, 6).replace("\n\n", "\r\n\r\n")
    path = tmp_path / "README.md"
    path.write_bytes(f"# Usage\r\n\r\nLoad it:\r\n\r\n{code}\r\n\r\n{prose_text}\r\n".encode())
    [doc] = read_documents([path])
    contexts = check(tokenizer, Chunker(tokenizer, max_tokens=60, min_tokens=8), [doc])
    file_text = path.read_text(encoding="utf-8")
    assert all(file_text[slice(*c.span)] == c.text for c in contexts)
    in_code = [c for c in contexts if "total_" in c.text]
    assert len(in_code) > 2 and any(c.text.startswith("    total_") for c in in_code)
    lines = [line for c in in_code for line in c.text.splitlines() if "total_" in line]
    assert len(lines) == 40 and all(line.startswith("    total_") for line in lines)


def test_a_scanned_page_of_a_pdf_is_in_no_contexts_pages(tokenizer, tmp_path):
    pymupdf = pytest.importorskip("pymupdf", reason="needs the docs extra")
    pdf = pymupdf.open()
    pdf.new_page().insert_text((72, 72), "The first page says the depot will become a library.")
    pixmap = pymupdf.Pixmap(pymupdf.csRGB, pymupdf.IRect(0, 0, 16, 16), False)
    pdf.new_page().insert_image(pymupdf.Rect(72, 72, 400, 400), pixmap=pixmap)
    pdf.new_page().insert_text((72, 72), "The third page says the work starts in spring.")
    pdf.save(tmp_path / "minutes.pdf")
    chunker = Chunker(tokenizer, max_tokens=200, min_tokens=8)
    items = list(chunker.chunk(read_documents([tmp_path / "minutes.pdf"])))
    assert [i.reason if isinstance(i, Skip) else i.pages for i in items] == [
        "no_text_layer",
        (1, 3),
    ]


def test_the_configuration_is_checked_up_front(tokenizer):
    overhead = Chunker(tokenizer).prompt_overhead
    assert overhead == max(
        len(tokenizer(build_prompt("x", t)).input_ids) - measure(tokenizer, "x") for t in TASK_TYPES
    )
    fits = 2048 - overhead
    Chunker(tokenizer, max_tokens=fits)
    with pytest.raises(BonitoError, match=rf"use max_tokens {fits} or less\.$"):
        Chunker(tokenizer, max_tokens=fits + 1)
    with pytest.raises(
        BonitoError, match=r"min_tokens \(--min-context-tokens\) must be between 1 and max_tokens"
    ):
        Chunker(tokenizer, max_tokens=10, min_tokens=11)
    with pytest.raises(
        BonitoError, match=r"overlap \(--overlap\) must be between 0 and half of max_tokens"
    ):
        Chunker(tokenizer, max_tokens=10, min_tokens=1, overlap=6)


def test_the_longest_prompt_and_completion_must_fit_the_models_window(tokenizer):
    overhead = Chunker(tokenizer).prompt_overhead
    window = 512 + overhead + 256
    Chunker(tokenizer, window=window).check_window(256)
    Chunker(tokenizer).check_window(10**6)  # a window not known is not checked
    with pytest.raises(
        BonitoError, match=r"use Chunking\.max_tokens \(--max-context-tokens\) 511 or less"
    ):
        Chunker(tokenizer, window=window).check_window(257)
    with pytest.raises(
        BonitoError,
        match=rf"use SamplingParams\.max_tokens \(--max-tokens\) {window - 512 - overhead} or",
    ):
        Chunker(tokenizer, window=window).check_window(window)
    with pytest.raises(
        BonitoError,
        match=r"lower SamplingParams\.max_tokens \(--max-tokens\) and Chunking\.max_tokens",
    ):
        Chunker(tokenizer, max_tokens=window, window=window).check_window(window)


def test_the_window_is_read_from_the_models_config_or_its_gguf(tiny_model, tmp_path):
    assert Chunker.from_model(str(tiny_model)).window == 4096
    pytest.importorskip("gguf", reason="gguf is not installed (pip install 'bonito[llamacpp]')")
    gguf = tmp_path / "tiny.gguf"
    convert = Path(__file__).parents[1] / "scripts" / "convert_to_gguf.py"
    subprocess.run([sys.executable, convert, tiny_model, gguf], check=True, capture_output=True)
    assert Chunker.from_model(str(gguf)).window == 4096


def test_prompts_are_measured_exactly_near_the_limit(tokenizer):
    overhead = Chunker(tokenizer).prompt_overhead
    limit = overhead + 40
    chunker = Chunker(tokenizer, max_tokens=40, min_tokens=1, max_input_tokens=limit)
    for text, fits in ((prose(14, 3), False), ("Hi.", True)):
        claimed = Context(text, 40, "d", "d", (0, len(text)))  # near the limit: measured
        assert chunker.prompt_fits(claimed) == fits
    items = list(chunker.chunk(corpus()[1:4]))
    assert sum(isinstance(item, Context) for item in items) > 20
    for item in items:
        if isinstance(item, Skip):
            assert item.reason == "prompt_too_long"
            continue
        prompts = [len(tokenizer(build_prompt(item.text, t)).input_ids) for t in TASK_TYPES]
        assert max(prompts) <= limit


class CountingBackend:
    """The Rust tokenizer, counting the characters it is given."""

    def __init__(self, backend):
        self.backend, self.chars = backend, 0

    def encode_batch_fast(self, texts, **kwargs):
        self.chars += sum(map(len, texts))
        return self.backend.encode_batch_fast(texts, **kwargs)

    def encode(self, text, **kwargs):
        self.chars += len(text)
        return self.backend.encode(text, **kwargs)


@pytest.mark.parametrize("overlap", [0, 32])
def test_the_cost_is_linear_in_the_length_of_a_document(tokenizer, overlap):
    """Each character is tokenized a bounded number of times, however long the document
    (2.4 MB is cut into sections)."""
    ratios = []
    for paragraphs in (50, 2000):
        chunker = Chunker(tokenizer, max_tokens=256, overlap=overlap)
        chunker._backend = counting = CountingBackend(chunker._backend)
        doc = Document("d", prose(15, paragraphs), "d")
        contexts = list(chunker.chunk([doc]))
        assert all(isinstance(c, Context) for c in contexts)
        ratios.append(counting.chars / len(doc.text))
    assert ratios[1] < 1.5 and ratios[1] < ratios[0] * 1.25


MEMORY_SCRIPT = """
import json, resource, sys
from transformers import AutoTokenizer
from bonito.read.chunking import Chunker, Context
from bonito.read.sources import read_documents
chunker = Chunker(AutoTokenizer.from_pretrained(sys.argv[1]), max_tokens=64, min_tokens=1)
contexts = chunker.chunk(read_documents([sys.argv[2]]))
counts = {"contexts": 0, "skips": 0}
for number, item in enumerate(contexts):
    if number == 10:
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    counts["contexts" if isinstance(item, Context) else "skips"] += 1
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({**counts, "growth_mb": (peak - baseline) / 1024}))
"""


@pytest.mark.heavy
def test_memory_stays_bounded_on_a_corpus_larger_than_it(tmp_path):
    """300 MB of documents are read and chunked lazily: the reading grows by far less than the
    corpus. (Most of each document is one long run without breaks, skipped without tokenizing,
    so the test is quick.)"""
    train("byte-level").save_pretrained(tmp_path / "tokenizer")
    row = json.dumps({"text": f"{prose(16, 2)} {'y' * 100_000} {prose(17, 1)}"}) + "\n"
    rows = 3000
    with (tmp_path / "corpus.jsonl").open("w") as file:
        for _ in range(rows):
            file.write(row)
    assert (tmp_path / "corpus.jsonl").stat().st_size > 300e6
    run = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, tmp_path / "tokenizer", tmp_path / "corpus.jsonl"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    (tmp_path / "corpus.jsonl").unlink()
    assert result["skips"] == rows and result["contexts"] >= 2 * rows
    assert result["growth_mb"] < 60


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not here")
@pytest.mark.heavy
def test_real_passages_from_shared_data(tokenizer):
    names = ("contractnli/", "privacy/", "pubmedqa/", "squadshifts/new_wiki_")
    files = [SHARED_DATA / f"{name}passages.jsonl" for name in names]
    docs = [doc for file in files for doc in islice(read_documents([file]), 300)]
    assert all(isinstance(doc, Document) for doc in docs) and len(docs) == 1200
    chunker = Chunker(tokenizer, max_tokens=128, min_tokens=16)
    # forms to fill in hold runs of dots longer than a context, and scraps between them
    contexts = check(tokenizer, chunker, docs, skipped={"too_long_word", "too_short"})
    assert len(contexts) > len(docs)
    assert sum(isinstance(item, Skip) for item in chunker.chunk(docs)) < len(contexts) / 500
