"""Decoding on a shared CPU: the thread count drops to the cores other processes leave free, outputs unchanged."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import torch

from nemo_like.components.training.cpu_threads import decoding_threads, free_cores, others_busy_cores

CORES = len(os.sched_getaffinity(0))


@pytest.fixture
def busy_machine() -> Iterator[None]:
    """One spinning process more than there are cores, for the test's length."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(CORES + 1)]
    time.sleep(0.3)  # let them reach their loops
    yield
    for p in spinners:
        p.kill()
        p.wait()


@pytest.fixture
def two_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads /proc/stat")
def test_a_busy_machine_leaves_one_thread_and_the_count_comes_back(busy_machine, two_threads):
    assert others_busy_cores() > CORES - 0.5  # the spinners, not this process, hold the cores
    assert free_cores() == 1
    with decoding_threads("cpu") as threads:
        assert threads == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_this_process_own_work_is_not_counted_as_others():
    """A sample taken while this process itself computes: its own time is taken off the machine's."""
    import threading

    stop = threading.Event()

    def spin() -> None:
        x = torch.randn(256, 256)
        while not stop.is_set():
            x = torch.tanh(x @ x)

    workers = [threading.Thread(target=spin) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        own_sample = others_busy_cores(0.3)
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert own_sample is not None and own_sample < CORES - 0.5


def test_other_devices_and_one_thread_are_left_alone(busy_machine, two_threads):
    with decoding_threads("meta") as threads:
        assert threads == 2 and torch.get_num_threads() == 2
    torch.set_num_threads(1)
    with decoding_threads("cpu") as threads:
        assert threads == 1
    assert torch.get_num_threads() == 1


def test_exact_match_under_load_decodes_the_same_tokens_on_fewer_threads(busy_machine, two_threads):
    from test_exact_match import ROWS, _char_tokenizer, _tiny_llama

    from nemo_like.components.eval.exact_match import _generate_batch, encode_prompt, generation_exact_match

    tok = _char_tokenizer()
    model = _tiny_llama(len(tok), tok.eos_token_id).eval()
    loaded = generation_exact_match(model, tok, ROWS, max_new_tokens=6, batch_size=4, num_examples=len(ROWS))
    assert loaded["threads"] == 1 and torch.get_num_threads() == 2
    # The same rows one by one on two threads, without the rule: the tokens the eval wrote on one.
    alone = [_generate_batch(model, [encode_prompt(row, tok, None, True)], 6, [tok.eos_token_id], tok.pad_token_id,
                             share_prefix=False)[0] for row in ROWS]
    assert [e["got"] for e in loaded["examples"]] == [tok.decode(ids, skip_special_tokens=True).strip() for ids in alone]
    assert any(e["got"] for e in loaded["examples"])


def test_group_sampling_under_load_runs_on_fewer_threads_and_samples_the_same(busy_machine, two_threads,
                                                                                tiny_tokenizer):
    from conftest import tiny_llama

    from nemo_like.components.rollout import HFGenerator, SamplingParams

    model = tiny_llama(len(tiny_tokenizer), seed=0).eval()
    prompts = [tiny_tokenizer(p)["input_ids"] for p in ("What is 3 plus 4?", "7 plus")]
    sp = SamplingParams(temperature=0.7, top_k=20, max_completion_length=12)
    eos, pad = [tiny_tokenizer.eos_token_id], tiny_tokenizer.pad_token_id
    rollouts = {}
    for adapt in (True, False):
        torch.manual_seed(3)
        rollouts[adapt] = HFGenerator(model, eos, pad, adapt_threads=adapt).generate(prompts, 3, sp)
    assert rollouts[True].threads == 1 and rollouts[False].threads == 2 and torch.get_num_threads() == 2
    assert rollouts[True].completion_ids == rollouts[False].completion_ids
    for a, b in zip(rollouts[True].logprobs, rollouts[False].logprobs):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-5)
