"""Generation eval on a quiet and on a shared machine: the shared-prefix cache against plain batched ``generate``.

    python benchmarks/eval_contention.py [--rounds 3] [--load 0 4] [--rows 50] [--threads 2]

Why: the exact-match evaluator encodes the prompt run its rows share once and copies its cache to
every row (``share_prefix``); on a quiet machine that saves time, and the question is what it
does when other processes share the cores (CI machines and laptops usually are). Per level of
``--load`` (that many background processes, each multiplying 256x256 matrices in a loop on one
thread), ``shared`` (``share_prefix=True``, the default) and ``plain`` (``share_prefix=False``) alternate,
``--rounds`` times each, on the first ``--rows`` rows of ``data/quickstart/test.jsonl`` with the
quickstart's settings (SmolLM2-135M-Instruct, chat template, 8 new tokens, batches of 50) and
``torch`` on ``--threads`` threads. Both choose their threads by the load (``adapt_threads``, the default: no
more than the cores other processes leave free); ``fixed`` is the shared path kept on ``--threads``
(``adapt_threads=False``). Answers of the two paths must be identical. Prints the medians,
``ratio eval_seconds_load<k> shared/plain`` per level (below 1: the shared prefix pays) and
``... chosen_threads/fixed_threads`` (below 1: choosing the threads by the load pays).

Measured 2026-12-05 (2 cores, ``--rounds 2``, several runs): load 0: shared 2.2-2.3 s, plain 3.3-3.5 s
(0.64-0.68); load 4: shared 16.4-26.7 s, plain 23.5-32.2 s (0.70-0.92); the shared prefix is the faster path
under this load too. What the load costs is the threads: with ``--threads 1`` at load 4 the shared path
took 11.2 s (plain 17.0 s) against 16-30 s on 2 threads. Load 8 (``--rounds 2``): shared 61.6 s, plain 61.0 s
(1.01): the shared path no longer loses, but both pay the oversubscribed second thread: on one thread
(``--threads 1``, one round) shared took 19.3 s and plain 28.5 s (0.68). Since the evaluator chooses its
threads by the load (one round at load 8): shared 18.6 s and plain 26.5 s on the one thread chosen, against
62.5 s for the shared path kept on two (chosen/fixed 0.30); at load 0 (3 rounds) both kept two threads,
2.07 s against 2.07 s (1.00).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _burn(stop: mp.Event) -> None:
    import torch

    torch.set_num_threads(1)
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    while not stop.is_set():
        for _ in range(50):
            a = torch.tanh(a @ b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--load", type=int, nargs="+", default=[0, 4])
    parser.add_argument("--rows", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from nemo_like import NeMoAutoModelForCausalLM
    from nemo_like._transformers.tokenizer import build_tokenizer
    from nemo_like.components.eval.exact_match import generation_exact_match, load_jsonl_rows

    torch.set_num_threads(args.threads)
    model_id = "HuggingFaceTB/SmolLM2-135M-Instruct"
    model = NeMoAutoModelForCausalLM.from_pretrained(model_id, torch_dtype=torch.float32)
    tokenizer = build_tokenizer(model_id)
    rows = load_jsonl_rows(str(REPO / "data/quickstart/test.jsonl"))[: args.rows]
    mapping = {"question": "question", "answer": "answer"}

    def run(name: str) -> tuple[float, list[str]]:
        start = time.perf_counter()
        result = generation_exact_match(model, tokenizer, rows, mapping, max_new_tokens=8, batch_size=50,
                                        num_examples=len(rows), share_prefix=name != "plain",
                                        adapt_threads=name != "fixed")
        used[name] = result["threads"]
        return time.perf_counter() - start, [e["got"] for e in result["examples"]]

    used: dict[str, int] = {}
    run("shared")  # warm-up: first calls allocate
    ctx = mp.get_context("spawn")
    for load in args.load:
        stop = ctx.Event()
        burners = [ctx.Process(target=_burn, args=(stop,), daemon=True) for _ in range(load)]
        for p in burners:
            p.start()
        time.sleep(2 if load else 0)
        times: dict[str, list[float]] = {"shared": [], "plain": [], "fixed": []}
        answers: dict[str, list[str]] = {}
        try:
            for r in range(args.rounds):
                for name in (tuple(times) if r % 2 == 0 else tuple(reversed(times))):
                    seconds, got = run(name)
                    times[name].append(seconds)
                    answers.setdefault(name, got)
                    print(f"load {load} round {r} {name:6s} {seconds:6.2f} s ({used[name]} threads)", flush=True)
        finally:
            stop.set()
            for p in burners:
                p.join(timeout=10)
        if answers["shared"] != answers["plain"]:
            raise SystemExit("the two paths gave different answers")
        if answers["shared"] != answers["fixed"]:
            print("note: the answers on the chosen threads differ from those on --threads", flush=True)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"load {load}: shared {med['shared']:.2f} s, plain {med['plain']:.2f} s, shared on --threads "
              f"{med['fixed']:.2f} s (medians of {args.rounds})")
        print(f"ratio eval_seconds_load{load} shared/plain {med['shared'] / med['plain']:.2f}")
        print(f"ratio eval_seconds_load{load} chosen_threads/fixed_threads {med['shared'] / med['fixed']:.2f}",
              flush=True)


if __name__ == "__main__":
    main()
