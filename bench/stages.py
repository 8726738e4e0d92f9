"""Where `rsthound analyze` spends its CPU time on a capture: each stage of the pipeline
timed on its own, in this one process (no helper processes, so no sharing of the cores).

    .venv/bin/python bench/stages.py FILE [--repeat R]

Stages, each over the whole file, CPU seconds (`time.process_time`), best of R:
- walk: finding the records and gathering each one's header and first bytes (`read_capture`);
- decode: `decode_tcp` of every batch, as a summary asks for it (lean);
- plan: `plan_batch` of every batch;
- track: `Analysis.feed_prepared` of every plan, then `finish` (the connection table and the
  summary; the plans are made before, untimed).

The sum is what one core would need; `run_analyze.py` times the whole command, whose
reader process and main process (which tracks, and reads too) share two cores.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from typing import Any

from rsthound.analyze import session
from rsthound.analyze.session import Analysis, prepare
from rsthound.formats.columns import DecodeStats
from rsthound.pipeline import CHUNK, FEW_COLLECTIONS, _keep_freed_memory
from rsthound.sources.capfile import read_capture


def stages(path: str) -> dict[str, float]:
    """One timing of each stage over the file at `path`."""
    took: dict[str, float] = dict.fromkeys(("walk", "decode", "plan", "track"), 0.0)

    def timed(name: str, f: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            t = time.process_time()
            try:
                return f(*args, **kwargs)
            finally:
                took[name] += time.process_time() - t
        return run

    t = time.process_time()
    for _ in read_capture(path, [], border=CHUNK):
        pass
    took["walk"] = time.process_time() - t
    analysis = Analysis()
    decode, plan = session.decode_tcp, session.plan_batch
    session.decode_tcp, session.plan_batch = timed("decode", decode), timed("plan", plan)
    try:  # prepare() as the reader calls it, its two stages timed
        plans = [prepare(b, analysis.selection, DecodeStats(), analysis.table.counts)
                 for b in read_capture(path, [], border=CHUNK)]
    finally:
        session.decode_tcp, session.plan_batch = decode, plan
    t = time.process_time()
    for p in plans:
        analysis.feed_prepared(p)
    analysis.finish([path])
    took["track"] = time.process_time() - t
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("file", help="a classic pcap or pcapng capture")
    ap.add_argument("--repeat", type=int, default=3, help="runs, the best of each stage kept")
    args = ap.parse_args()
    _keep_freed_memory()  # as analyze runs: freed arrays stay in the heap
    gc.set_threshold(*FEW_COLLECTIONS)
    best: dict[str, float] = {}
    for _ in range(args.repeat):
        for k, v in stages(args.file).items():
            best[k] = min(best.get(k, v), v)
    for k, v in best.items():
        print(f"{k:8} {v:7.2f} s")
    print(f"{'sum':8} {sum(best.values()):7.2f} s   (CPU, one process, best of {args.repeat})")


if __name__ == "__main__":
    main()
