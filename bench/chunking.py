"""Reading and chunking throughput, against the tokenizer alone on the same text (the floor:
chunking must tokenize everything once), for 32k-vocabulary BPE tokenizers of the two families
bonito generators use, trained here on the shared passages: byte-level (Llama 3) and
SentencePiece-style with byte fallback (Mistral, bonito-v1).

    python bench/chunking.py [--max-tokens 512] [--megabytes 8] [--pages 200]

Measures plain text (.txt) and JSON Lines, PDF pages per second, and how the cost per MB moves
as one document grows 16-fold. Prints a table and writes bench/results/chunking.json. Speeds are
wall-clock, what a user waits for (the Rust tokenizer uses every core), so run it on an otherwise
idle machine; CPU seconds are recorded too, and the growth curve is in CPU seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import tokenizers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from bonito.read.chunking import Chunker, Context
from bonito.read.sources import Document, read_documents

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def passages() -> list[str]:
    """The shared passages (about 8 MB), or the examples where they are absent."""
    files = sorted(SHARED.glob("*/*passages.jsonl")) or [ROOT / "examples" / "passages.jsonl"]
    return [d.text for d in read_documents(files) if isinstance(d, Document)]


def train_tokenizer(kind: str, texts: list[str]) -> PreTrainedTokenizerFast:
    special = ["<unk>", "<s>", "</s>"]
    if kind == "byte-level":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tokenizer = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split("\n", "isolated"), pre_tokenizers.Metaspace()]
        )
        tokenizer.decoder = decoders.Metaspace()
        special, alphabet = special + [f"<0x{i:02X}>" for i in range(256)], []
    trainer = trainers.BpeTrainer(
        vocab_size=32000, special_tokens=special, initial_alphabet=alphabet, show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>")


def timed(run, *args) -> tuple[float, float, object]:
    """CPU and wall seconds of run(*args), and what it returned."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = run(*args)
    return time.process_time() - cpu, time.perf_counter() - wall, result


def chunk_inputs(chunker: Chunker, inputs: list[Path]) -> int:
    return sum(isinstance(c, Context) for c in chunker.chunk(read_documents(inputs)))


def tokenize_only(chunker: Chunker, texts: list[str]) -> int:
    return sum(sum(chunker.count(texts[i : i + 1000])) for i in range(0, len(texts), 1000))


def write_pdf(path: Path, texts: list[str], pages: int) -> None:
    import pymupdf

    pdf = pymupdf.open()
    for number in range(pages):
        page = pdf.new_page()
        page.insert_textbox(pymupdf.Rect(50, 50, 550, 800), texts[number % len(texts)][:2500])
    pdf.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--megabytes", type=float, default=8.0)
    parser.add_argument("--pages", type=int, default=200)
    args = parser.parse_args()
    texts = passages()
    while sum(map(len, texts)) < args.megabytes * 1e6:
        texts = texts * 2
    size = 0
    texts = [t for t in texts if (size := size + len(t)) <= args.megabytes * 1e6]
    megabytes = sum(map(len, texts)) / 1e6
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "corpus.txt").write_text("\n\n".join(texts), encoding="utf-8")
        with (folder / "corpus.jsonl").open("w", encoding="utf-8") as file:
            file.writelines(json.dumps({"text": t}) + "\n" for t in texts)
        write_pdf(folder / "pages.pdf", texts, args.pages)
        for kind in ("byte-level", "sentencepiece"):
            tokenizer = train_tokenizer(kind, texts[:20000])
            chunker = Chunker(tokenizer, max_tokens=args.max_tokens)
            base_cpu, base_wall, tokens = timed(tokenize_only, chunker, texts)
            result = {
                "tokenizer_only_mb_per_s": megabytes / base_wall,
                "tokenizer_only_cpu_mb_per_s": megabytes / base_cpu,
                "tokens": tokens,
            }
            for name in ("corpus.txt", "corpus.jsonl"):
                path = folder / name
                cpu, wall, contexts = timed(chunk_inputs, chunker, [path])
                result[name] = {
                    "mb_per_s": megabytes / wall,
                    "cpu_mb_per_s": megabytes / cpu,
                    "vs_tokenizer_only": base_wall / wall,
                    "contexts": contexts,
                }
                rows.append((kind, name, megabytes / wall, base_wall / wall, contexts))
            pdf = folder / "pages.pdf"
            _, read_wall, _ = timed(list, read_documents([pdf]))
            _, wall, contexts = timed(chunk_inputs, chunker, [pdf])
            result["pdf"] = {
                "pages": args.pages,
                "pages_per_s_read": args.pages / read_wall,
                "pages_per_s_read_and_chunk": args.pages / wall,
                "contexts": contexts,
            }
            rows.append((kind, f"pdf ({args.pages} pages)", None, None, contexts))
            result["scaling"] = scaling(chunker, "\n\n".join(texts))
            results[kind] = result
    print_table(rows, results, megabytes)
    out = ROOT / "bench" / "results" / "chunking.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"platform": platform.platform(), "cpus": os.cpu_count()}
    out.write_text(
        json.dumps(
            {
                "megabytes": megabytes,
                "max_tokens": args.max_tokens,
                "machine": machine,
                "tokenizers": tokenizers.__version__,
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {out.relative_to(ROOT)}")


def scaling(chunker: Chunker, text: str) -> list[dict]:
    """CPU seconds per MB for one document of growing length: flat means linear."""
    points = []
    for megabytes in (0.25, 1, 4):
        chars = int(megabytes * 1e6)
        doc = Document("d", (text * (1 + chars // len(text)))[:chars], "d")
        cpu, _, _ = timed(list, chunker.chunk([doc]))
        points.append({"megabytes": megabytes, "cpu_s_per_mb": cpu / megabytes})
    return points


def print_table(rows, results, megabytes: float) -> None:
    print(f"\nchunking {megabytes:.1f} MB of shared passages (wall time)\n")
    print(f"{'tokenizer':14} {'input':22} {'MB/s':>7} {'vs tokenizer':>13} {'contexts':>9}")
    for kind, name, speed, ratio, contexts in rows:
        if speed is None:
            pdf = results[kind]["pdf"]
            speeds = f"{pdf['pages_per_s_read']:.0f} pages/s read, "
            speeds += f"{pdf['pages_per_s_read_and_chunk']:.0f} read+chunk"
            print(f"{kind:14} {name:22} {speeds}  {contexts:>6}")
        else:
            print(f"{kind:14} {name:22} {speed:7.2f} {ratio:12.2f}x {contexts:9}")
    for kind, result in results.items():
        only = result["tokenizer_only_mb_per_s"]
        curve = ", ".join(
            f"{p['megabytes']:g} MB: {p['cpu_s_per_mb']:.2f}" for p in result["scaling"]
        )
        print(f"{kind}: tokenizer alone {only:.2f} MB/s; CPU s per MB by document size: {curve}")


if __name__ == "__main__":
    main()
