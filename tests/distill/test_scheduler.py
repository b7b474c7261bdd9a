"""Dealing subtasks to processes as they become free, over the process group's key-value store."""

import threading
import time

import pytest
import torch
import torch.distributed as dist

from d3hf.distill.scheduler import SubtaskScheduler


def _work(store, rank, order, seconds, done, publish=True):
    scheduler = SubtaskScheduler(order, rank, store)
    while (k := scheduler.claim()) is not None:
        time.sleep(seconds[k])
        done.append((rank, k))
        if publish:
            scheduler.publish(k, {"index": k, "process": rank, "state": {"w": torch.full((2,), float(k))}})
    return scheduler


@pytest.mark.parametrize("ranks, subtasks", [(2, 5), (4, 2), (3, 3)])
def test_every_subtask_is_claimed_once_whatever_the_ranks_and_subtasks(ranks, subtasks):
    store, done = dist.HashStore(), []
    seconds = {k: 0.01 for k in range(subtasks)}
    threads = [threading.Thread(target=_work, args=(store, r, list(range(subtasks)), seconds, done))
               for r in range(ranks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(k for _, k in done) == list(range(subtasks))


def test_a_free_process_takes_the_next_subtask_so_uneven_ones_balance():
    """One subtask 6x longer than the others: the other process takes all the short ones."""
    store, done = dist.HashStore(), []
    seconds = {0: 0.6, 1: 0.1, 2: 0.1, 3: 0.1, 4: 0.1, 5: 0.1, 6: 0.1}
    order = sorted(seconds, key=lambda k: -seconds[k])  # longest first, as the runner deals them
    threads = [threading.Thread(target=_work, args=(store, r, order, seconds, done)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    by_rank = {r: sorted(k for rr, k in done if rr == r) for r in range(2)}
    long_rank = next(r for r in by_rank if 0 in by_rank[r])
    assert by_rank[long_rank] == [0] and sorted(by_rank[1 - long_rank]) == [1, 2, 3, 4, 5, 6]


def test_the_main_process_collects_what_others_publish_however_late():
    store = dist.HashStore()
    main = SubtaskScheduler([0, 1, 2], 0, store)
    assert main.claim() == 0
    late = threading.Thread(target=_work, args=(store, 1, [0, 1, 2], {1: 0.3, 2: 0.5}, []))
    late.start()
    results = main.collect([1, 2], poll_seconds=0.05)  # waits past any short deadline, in order
    late.join()
    assert [r["index"] for r in results] == [1, 2] and torch.equal(results[1]["state"]["w"], torch.full((2,), 2.0))
    assert not store.check(["d3hf/subtasks/result/1"])  # handed over, not kept
    assert main.claimed_by(2) == "process 1"


def test_preferred_subtasks_are_claimed_first_and_one_process_needs_no_store():
    alone = SubtaskScheduler([3, 1, 2, 0], 0, preferred=[2])
    assert [alone.claim() for _ in range(5)] == [2, 3, 1, 0, None]
