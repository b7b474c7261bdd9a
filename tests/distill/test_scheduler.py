"""Dealing subtasks to processes as they become free, over the process group's key-value store."""

import threading
import time

import pytest
import torch
import torch.distributed as dist

from d3hf.distill.scheduler import SubtaskFailed, SubtaskScheduler


def _work(store, rank, order, seconds, done, publish=True):
    scheduler = SubtaskScheduler(order, rank, store)
    scheduler._prefix = "run"  # one key space for the threads standing in for processes
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
    other = SubtaskScheduler([0, 1, 2], 1, store)
    other._prefix = main._prefix  # the same run's key space, as two processes' first schedulers share

    def late_work():
        while (k := other.claim()) is not None:
            time.sleep({1: 0.3, 2: 0.5}[k])
            other.publish(k, {"index": k, "process": 1, "state": {"w": torch.full((2,), float(k))}})

    late = threading.Thread(target=late_work)
    late.start()
    results = main.collect([1, 2], poll_seconds=0.05)  # waits past any short deadline, in order
    late.join()
    assert [r["index"] for r in results] == [1, 2] and torch.equal(results[1]["state"]["w"], torch.full((2,), 2.0))
    assert not store.check([f"{main._prefix}/result/1/0"])  # handed over, not kept
    assert main.claimed_by(2) == "process 1"


def test_reserved_subtasks_stay_with_the_process_that_holds_their_checkpoints():
    store = dist.HashStore()
    a = SubtaskScheduler([0, 1, 2, 3], 0, store, preferred=[2, 3])
    b = SubtaskScheduler([0, 1, 2, 3], 1, store)
    b._prefix = a._prefix
    a.reserve()
    b.reserve()  # holds nothing: reserves nothing
    assert [b.claim() for _ in range(3)] == [0, 1, None]  # never 2 or 3, however fast b is
    assert [a.claim() for _ in range(3)] == [2, 3, None]
    alone = SubtaskScheduler([3, 1, 2, 0], 0, preferred=[2])
    alone.reserve()
    assert [alone.claim() for _ in range(5)] == [2, 3, 1, 0, None]


def test_a_result_larger_than_one_store_message_travels_in_parts(monkeypatch):
    from d3hf.distill import scheduler as module

    monkeypatch.setattr(module, "PART_BYTES", 1000)
    store = dist.HashStore()
    sender = SubtaskScheduler([0], 1, store)
    receiver = SubtaskScheduler([0], 0, store)
    receiver._prefix = sender._prefix
    big = torch.arange(5000, dtype=torch.float32)  # 20 kB: 21 parts
    sender.publish(0, {"index": 0, "state": {"w": big}})
    assert int(store.get(f"{sender._prefix}/result/0")) > 20
    assert torch.equal(receiver.collect([0])[0]["state"]["w"], big)


def test_a_subtask_that_fails_elsewhere_fails_the_main_process_instead_of_a_wait():
    store = dist.HashStore()
    worker = SubtaskScheduler([0], 1, store)
    main = SubtaskScheduler([0], 0, store)
    main._prefix = worker._prefix
    worker.publish_error(0, "Traceback ...\nNonFiniteError: the mtt loss is nan")
    with pytest.raises(SubtaskFailed, match=r"(?s)Process 1 failed on subtask 0:.*the mtt loss is nan"):
        main.collect([0], poll_seconds=0.01)
