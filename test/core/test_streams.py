"""Stream priorities, rebuild pacing and the background mark: clean fallbacks on the CPU, and the
CUDA calls they would make (through stand-ins for torch.cuda's Stream and Event). < 1 s."""

from __future__ import annotations

import threading

import pytest
import torch

from csr_ros.core.model import device as dev
from csr_ros.core.model import streams
from csr_ros.core.model.cuda_graphs import StepRunner
from csr_ros.core.model.kv_state import KVState

pytestmark = pytest.mark.core


def test_priority_numbers():
    assert streams.priority_value("high", (0, -5)) == -5  # lower number = higher priority
    assert streams.priority_value("low", (0, -5)) == 0
    assert streams.priority_value("default", (0, -5)) == 0
    with pytest.raises(ValueError):
        streams.priority_value("urgent", (0, -5))


def test_cpu_falls_back_cleanly():
    before = torch.get_num_threads()
    for kind in streams.PRIORITIES:
        assert streams.priority_stream("cpu", kind) is None
        assert dev.side_stream(torch.device("cpu"), kind) is None
    assert streams.use_hot_stream("cpu") is None and streams.hot_streams("cpu") == []
    pacer = streams.ChunkPacer(None)
    pacer.after_chunk()
    assert pacer.waits == 0

    def stop():
        return False

    assert streams.paced(stop, pacer) is stop and streams.paced(stop, None) is stop
    with dev.on_stream(None):
        pass
    dev.join_stream(None)
    assert torch.get_num_threads() == before


class FakeStream:
    """Stands in for torch.cuda.Stream: records the priority it was made with."""

    made: list = []

    def __init__(self, device=None, priority=0):
        self.device, self.priority = device, priority
        FakeStream.made.append(priority)

    @staticmethod
    def priority_range():
        return (0, -3)

    def wait_stream(self, other):
        pass


class NoPriorityStream(FakeStream):
    def __init__(self, device=None, **kwargs):
        if kwargs:
            raise TypeError("unexpected keyword argument 'priority'")
        super().__init__(device)


def test_priorities_reach_cuda_streams_and_old_torch_falls_back(monkeypatch):
    FakeStream.made = []
    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    assert streams.priority_stream("cuda:0", "high").priority == -3
    assert dev.side_stream("cuda:0", "low").priority == 0
    monkeypatch.setattr(torch.cuda, "Stream", NoPriorityStream)
    assert streams.priority_stream("cuda:0", "high").priority == 0  # plain stream, logged


class FakeEvent:
    log: list = []

    def record(self, stream):
        FakeEvent.log.append("record")

    def synchronize(self):
        FakeEvent.log.append("sync")


@pytest.mark.parametrize("depth,expected", [(1, ["record", "sync"] * 3),
                                            (2, ["record", "record", "sync", "record", "sync"])])
def test_pacer_keeps_at_most_depth_chunks_in_flight(monkeypatch, depth, expected):
    FakeEvent.log = []
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    pacer = streams.ChunkPacer(object(), depth=depth)
    calls = []
    stop = streams.paced(lambda: calls.append(1) or False, pacer)
    assert [stop() for _ in range(3)] == [False] * 3 and len(calls) == 3
    assert FakeEvent.log == expected


def test_background_mark_keeps_builders_off_the_graph_runner(tiny):
    runner = StepRunner(tiny.model, sizes=(1, 8), capture=False)
    kv = KVState(tiny.model, "cpu", 16, runner=runner)
    assert not streams.in_background()
    with streams.background():
        with streams.background():
            assert streams.in_background()
        assert streams.in_background()
        seen = []
        t = threading.Thread(target=lambda: seen.append(streams.in_background()))
        t.start(), t.join()
        assert seen == [False]  # per thread
        kv.append([5, 6, 7])
    assert not streams.in_background()
    assert runner.stats == {"graph": 0, "explicit": 0, "declined": 0, "background": 1}
    kv.append([8])
    assert runner.stats["explicit"] == 1


def test_every_spelling_of_one_gpu_finds_the_same_hot_stream(monkeypatch):
    """use_hot_stream("cuda") must be what on_stream's hot_streams(torch.device("cuda", 0)) sees."""
    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: FakeStream(device))
    switched = []
    monkeypatch.setattr(torch.cuda, "set_stream", switched.append)
    monkeypatch.setattr(streams, "_HOT", {})
    hot = streams.use_hot_stream("cuda")
    assert switched == [hot] and hot.priority == -3
    assert streams.hot_streams(torch.device("cuda", 0)) == [hot] == streams.hot_streams("cuda:0")
    assert streams.use_hot_stream(torch.device("cuda:0")) is hot  # one shared hot stream per GPU
    assert streams.hot_streams("cuda:1") == []
