"""The garbage-collector policy (server/heap.py), in this process."""

from __future__ import annotations

import gc

from server.heap import YOUNG, Collector


def test_install_counts_collections_and_uninstall_restores_the_collector() -> None:
    before = gc.get_threshold()
    heap = Collector()
    heap.install()
    try:
        assert gc.get_threshold() == (YOUNG, *before[1:])
        gc.collect()
        assert heap.collections[2] == 1 and heap.pause_seconds[2] > 0
        heap.settle()
        assert heap.frozen == gc.get_freeze_count() > 0
        assert heap.collections[2] == 2  # the settle's own collection
    finally:
        heap.uninstall()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert heap.collections[2] == 2  # no longer observing


def test_a_settle_still_collects_cycles_made_before_it() -> None:
    heap = Collector()
    heap.install()
    try:
        heap.settle()

        class Node:
            other: object = None

        def cycle() -> Node:
            a, b = Node(), Node()
            a.other, b.other = b, a
            return a

        cycles = [cycle() for _ in range(1000)]
        heap.settle()  # alive: frozen with the rest
        kept = heap.frozen
        del cycles
        heap.settle()  # unfrozen, found to be 1000 cycles (2000 objects), collected
        assert heap.frozen <= kept - 2000
    finally:
        heap.uninstall()
