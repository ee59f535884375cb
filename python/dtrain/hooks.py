"""dtrain's reducers as PyTorch DDP communication hooks.

    ddp.register_comm_hook(None, dtrain.hooks.reducer("exdyna:0.01"))

DDP hands a hook each bucket of gradients (summed over nothing yet: this rank's own) in bucket
order. The hook passes the bucket's memory to dtrain's reducer (no copy for a contiguous float32
CPU bucket) on dtrain's background thread, and returns a future that thread completes with the
average over the ranks (or the compressor's estimate of it), as DDP's default hook does. So
reduction overlaps the rest of backprop.

DDP rebuilds its buckets after the first iteration. The reducer learns the layout as buckets
arrive: the steps in which it sees a new layout are averaged dense (DDP's first two steps), later
ones go through the reducer, whose per-bucket state (error feedback, momentum, warm-started
factors) is reset when the layout changes.
"""
import concurrent.futures
import threading

import torch

from ._dtrain import BucketStream, Group, validate_spec
from .group import init


_worker = None
_worker_lock = threading.Lock()


def _background():
    """dtrain's background thread, one for all hooks: they share the group, and a group serves
    one thread at a time, every rank's collectives in the same order."""
    global _worker
    with _worker_lock:
        if _worker is None:
            _worker = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="dtrain-reducer")
        return _worker


class Reducer:
    """A DDP comm hook running one dtrain reducer. Use `reducer(spec)` to make one.

    `state` passed to register_comm_hook may be None (the group of dtrain.init()) or a
    dtrain.Group. Figures (read them between steps): bytes_sent, bytes_received, steps,
    learning_steps, step_metrics(). Buckets must be on the CPU (DDP over gloo); a bucket of another
    dtype than float32 goes through a float32 copy.
    """

    def __init__(self, spec, group=None, start_step=0):
        validate_spec(spec)  # ValueError with dtrain's message, before any training
        self.spec = spec
        # DDP reads a hook's names (its checks, its logger), as for a function.
        self.__name__ = self.__qualname__ = "dtrain_hook"
        self._group = group
        self._start_step = start_step
        self._stream = None
        self._last = None  # the latest bucket's work, for close()

    def __call__(self, state, bucket):
        if self._stream is None:
            group = self._group
            if group is None:
                group = state if isinstance(state, Group) else init()
            self._stream = BucketStream(group, self.spec, self._start_step)
        buffer = bucket.buffer()
        if buffer.device.type != "cpu":
            raise ValueError("dtrain hook %r: bucket %d is on %s: dtrain's hooks reduce CPU "
                             "buckets only" % (self.spec, bucket.index(), buffer.device))
        work = buffer
        if buffer.dtype != torch.float32 or not buffer.is_contiguous():
            work = buffer.detach().to(dtype=torch.float32).contiguous()
        shapes = [list(p.shape) for p in bucket.parameters()]
        index, last = bucket.index(), bucket.is_last()
        future = torch.futures.Future()

        def run():
            try:
                self._stream.reduce(index, work.data_ptr(), work.numel(), shapes, last)
                if work is not buffer:
                    buffer.copy_(work)
                future.set_result(buffer)
            except BaseException as e:  # surfaces in DDP's backward on the training thread
                future.set_exception(e)

        # One worker: buckets are reduced in the order DDP hands them out, on every rank.
        self._last = _background().submit(run)
        return future

    def _figure(name):  # a figure of the stream, 0 before the first bucket
        return property(lambda self: 0 if self._stream is None else getattr(self._stream, name))

    bytes_sent = _figure("bytes_sent")
    bytes_received = _figure("bytes_received")
    steps = _figure("steps")
    learning_steps = _figure("learning_steps")
    del _figure

    def step_metrics(self):
        return {} if self._stream is None else dict(self._stream.step_metrics())

    def close(self):
        """Waits for this hook's buckets in flight (DDP's backward already does, at its end)."""
        if self._last is not None:
            self._last.result()
            self._last = None


def reducer(spec, group=None, start_step=0):
    """A DDP comm hook averaging each bucket with dtrain's `spec` (any --reduce spec)."""
    return Reducer(spec, group=group, start_step=start_step)
