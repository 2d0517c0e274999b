#!/usr/bin/env python
"""Data loading of the CPU testbed: one training batch with and without the in-memory image memo.

A testbed step loads a batch of 128 samples (``ConversationDataset.__getitem__``: the tokenised row, the decoded
and normalised 64 px image) and collates it. Decoding repeats every epoch, since a run sees each of its ~8,000
training images about 11 times; ``data.image_memory_mb`` (:class:`mixlora.data.images.ImageMemo`) keeps the
processed images after their first read. Modes, on the same seeded batches:

    decode   image_memory_mb=0: every item decodes its PNG (what each epoch cost before the memo)
    memo     image_memory_mb=512 after one pass over the batches: every image is served from memory

Time: median over ``--batches`` of loading and collating one batch, the two modes interleaved batch by batch so
machine noise hits both alike. The result also checks that both modes return identical batches.

    python scripts/bench_data.py --out results/bench   # writes results/bench/data_cpu.{json,md}
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from mixlora.profiling import run_metadata, write_result

ROOT = Path(__file__).resolve().parents[1]


def markdown(result: dict) -> str:
    lines = [f"# Testbed data loading, batch of {result['batch']} (CPU, {result['threads']} thread)", "",
             f"`{result['command']}`", "", f"{result['date']}, commit {result['git']}, {result['device']} ({result['machine']})", "",
             "| mode | ms per batch (median) | items/s |", "|---|---:|---:|"]
    for row in result["rows"]:
        lines.append(f"| {row['mode']} | {row['batch_ms']:.1f} | {row['items_per_s']:.0f} |")
    lines += ["", f"memo / decode time per batch: **{result['ratio']:.2f}x**; identical batches: "
                  f"{result['identical']}.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="data/testbed_table",
                   help="a testbed build (any sizes); the table's build is generated there if it holds none")
    p.add_argument("--batch", type=int, default=128, help="samples per batch (the testbed's)")
    p.add_argument("--batches", type=int, default=40, help="timed batches per mode")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (a testbed worker uses 1)")
    p.add_argument("--out", default=None, help="folder for data_cpu.json/.md (printed either way)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from omegaconf import OmegaConf

    from mixlora.build import build_tokenizer_from_config
    from mixlora.data.collator import TrainingCollator
    from mixlora.data.dataset import ConversationDataset
    from mixlora.data.images import ImageProcessor
    from mixlora.data.testbed import make_testbed
    from mixlora.data.testbed.writer import read_manifest
    from mixlora.testbed.recipe import IMAGE_POOL, TABLE_DATA, TEMPLATE, template_corpus

    data = Path(args.data)
    manifest = read_manifest(data) or make_testbed(data, progress=sys.stderr.isatty(), **TABLE_DATA)
    annotations = data / "train.json"
    model_cfg = OmegaConf.load(ROOT / "configs/model/tiny.yaml")  # the testbed's stack
    with tempfile.TemporaryDirectory() as tmp:  # the testbed's tokenizer: its corpus and the tiny stack's BPE
        corpus = [data / "stage1.json", annotations, template_corpus(Path(tmp))]
        tokenizer = build_tokenizer_from_config(model_cfg.tokenizer, corpus)
    processor = ImageProcessor(manifest["image_size"])
    image_tokens = (manifest["image_size"] // model_cfg.builder.patch_size // IMAGE_POOL) ** 2  # pooled patches
    datasets = {mode: ConversationDataset(str(annotations), tokenizer, processor, image_tokens,
                                          image_folder=str(data / "images"), template=TEMPLATE, max_length=128,
                                          instruction_spans=True, image_memory_mb=memory)
                for mode, memory in (("decode", 0), ("memo", 512))}
    collate = TrainingCollator(tokenizer.pad_token_id)
    n = len(datasets["decode"])
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(n, (args.batch,), generator=generator).tolist() for _ in range(args.batches)]
    for idx in batches:  # the memo's first pass (this also warms the OS file cache for the decode mode)
        collate([datasets["memo"][i] for i in idx])
    times = {mode: [] for mode in datasets}
    identical = True
    for idx in batches:
        out = {}
        for mode, ds in datasets.items():
            start = time.perf_counter()
            out[mode] = collate([ds[i] for i in idx])
            times[mode].append(time.perf_counter() - start)
        identical &= all(torch.equal(out["decode"][k], out["memo"][k]) for k in out["decode"]
                         if isinstance(out["decode"][k], torch.Tensor))
    rows = [dict(mode=mode, batch_ms=1e3 * statistics.median(t), items_per_s=args.batch / statistics.median(t))
            for mode, t in times.items()]
    result = dict(**run_metadata(torch.device("cpu"), argv, script=__file__), threads=args.threads,
                  batch=args.batch, samples=n, memo_images=len(datasets["memo"]._images), rows=rows,
                  ratio=rows[1]["batch_ms"] / rows[0]["batch_ms"], identical=identical, args=vars(args))
    text = markdown(result)
    print(text)
    if args.out:
        print(f"wrote {write_result(args.out, 'data_cpu', result, text)} and .md", file=sys.stderr)
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
