"""Continuous batching for Serve: one refinement pool per model, requests joining at the next step.

A request's cost is its steps x frames. Handing every waiting request to one `generate` call (what
`@serve.batch` did) made a request that arrived while a batch ran wait for all of that batch's
steps, and a 1-step request batched with a 100-step one wait for all 100. Here each model has one
`RefinementPool` (`t2p.generation`), whose rows are each at their own step of their own schedule:
- a request joins the pool at its next refinement step, refined in the same forward pass as every
  other row, and leaves when its own schedule ends: it waits for at most one step of the running
  batch before its first step (streamed at once), and a 1-step request takes one step, never the
  steps of the long requests beside it;
- the refiner never idles while a request waits: a row that finishes is replaced at the next step;
- at most `max_batch_size` rows are in a pool; later requests wait in arrival order;
- an idle pool waits up to `batch_wait_timeout_s` for more requests before its first step, so a
  burst that arrives together starts together (0: at once);
- the pools of different models take turns, one step each; batches never mix models.
Every step runs on one refinement thread, one after another without waiting for the event loop,
which only hands requests in and results out: on a CPU one step's matrix products take every core. Sentences and corrections send their requests here too (`generate_all`), so they share
the steps of one-sign requests. A streaming request gets its sequence after each of its steps.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Hashable, Sequence

from t2p.generation import Generator, RefinementPool, Row, SignRequest
from t2p.model import T2PModel
from t2p.pose import Keypoints


@dataclass(eq=False)
class _Entry:
    item: SignRequest
    stream: bool
    arrived: float
    loop: asyncio.AbstractEventLoop  # where the request waits: results are handed over there
    out: asyncio.Queue = field(default_factory=asyncio.Queue)  # (Keypoints, last) per step streamed; or an error
    cancelled: bool = False

    def give(self, outcome) -> None:
        """From the refinement thread: (Keypoints, last) or an error, into the request's queue."""
        try:
            self.loop.call_soon_threadsafe(self.out.put_nowait, outcome)
        except RuntimeError:  # its event loop has closed: nobody waits for it
            pass


class _ModelPool:
    """One model's pool, its rows' requests and the requests waiting for a place."""

    def __init__(self, name: Hashable, model: T2PModel):
        self.name, self.model = name, model
        self.pool = RefinementPool(model)
        self.entries: dict[Row, _Entry] = {}  # written on the refinement thread only
        self.waiting: deque[_Entry] = deque()
        self.replaced = False  # the model was loaded again under its name: this pool only finishes its rows

    def has_work(self) -> bool:
        while self.waiting and self.waiting[0].cancelled:
            self.waiting.popleft()
        return bool(self.entries) or bool(self.waiting)


@dataclass
class _Advanced:
    """What one turn of a pool did, for the event loop to hand out."""
    results: list[tuple[_Entry, object]]  # (entry, (Keypoints, last) or an error)
    joined: int = 0
    refined: int = 0
    waited_s: float = 0.0


class ContinuousBatcher:
    """The model pools and the refinement thread that steps them (see the module)."""

    def __init__(self, max_batch_size: int, batch_wait_timeout_s: float,
                 on_join: Callable[[Hashable, int], None] = lambda key, count: None,
                 on_step: Callable[[Hashable, int], None] = lambda key, rows: None):
        self.max_batch_size, self.batch_wait_timeout_s = max_batch_size, batch_wait_timeout_s
        self.on_join = on_join  # told of the requests that joined a pool at one step: its model and how many
        self.on_step = on_step  # told of every step taken: its model and how many requests it refined
        self.busy_s = 0.0    # seconds the refinement thread spent joining and refining
        self.waited_s = 0.0  # seconds the requests waited, summed, from their arrival to joining a pool
        self.pools: dict[Hashable, _ModelPool] = {}
        self.turns: deque[Hashable] = deque()  # the models, in the order they take their steps
        self._lock = threading.Lock()      # the pools and turns, between the event loop and the thread
        self._wake = threading.Event()     # set when a request arrives
        self._thread: threading.Thread | None = None
        self._stopped = False

    async def generate(self, model: T2PModel, key: Hashable, item: SignRequest) -> Keypoints:
        """`item`'s sequence. `key`: the model's name (batches never mix models)."""
        entry = self._submit(model, key, item, stream=False)
        try:
            return _unwrap(await entry.out.get())[0]
        finally:
            entry.cancelled = True  # done, or given up on (a timeout): not worth a place in a batch

    async def stream(self, model: T2PModel, key: Hashable, item: SignRequest) -> AsyncIterator[Keypoints]:
        """`item`'s sequence after each of its steps; the last one is what `generate` gives."""
        entry = self._submit(model, key, item, stream=True)
        try:
            while True:
                sequence, last = _unwrap(await entry.out.get())
                yield sequence
                if last:
                    return
        finally:
            entry.cancelled = True

    async def generate_all(self, model: T2PModel, key: Hashable, items: Sequence[SignRequest]) -> list[Keypoints]:
        """Several items at once (a sentence's signs, its transitions, a correction's window)."""
        return list(await asyncio.gather(*(self.generate(model, key, item) for item in items)))

    def generator(self, model: T2PModel, key: Hashable, loop: asyncio.AbstractEventLoop) -> Generator:
        """A function like `generate` that sends its requests here; for `compose` and `correct`,
        which call it from a thread of their own while `loop` runs the batches."""
        def batched(called_model: T2PModel, requests: Sequence[SignRequest]) -> list[Keypoints]:
            if called_model is not model:
                raise ValueError("this generator batches one model's requests only")
            return asyncio.run_coroutine_threadsafe(self.generate_all(model, key, list(requests)), loop).result()

        return batched

    def shutdown(self, wait: bool = False) -> None:
        """Stop the refinement thread after its current step (`wait`: until it has ended)."""
        self._stopped = True
        self._wake.set()
        if wait and self._thread is not None:
            self._thread.join()

    # --- the refinement thread ----------------------------------------------------------------

    def _submit(self, model: T2PModel, key: Hashable, item: SignRequest, stream: bool) -> _Entry:
        entry = _Entry(item, stream, time.monotonic(), asyncio.get_running_loop())
        with self._lock:
            state = self.pools.get((key, id(model)))
            if state is None:  # a model evicted and loaded again under its name gets a pool of its own
                for other in self.pools.values():
                    other.replaced = other.replaced or other.name == key
                state = self.pools[(key, id(model))] = _ModelPool(key, model)
                self.turns.append((key, id(model)))
            state.waiting.append(entry)
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._run, name="t2p-refine", daemon=True)
                self._thread.start()
            self._wake.set()
        return entry

    def _run(self) -> None:
        """The refinement thread: one step of a pool after another while any has work, without
        waiting for the event loop between steps (it only hands requests in and results out)."""
        while not self._stopped:
            with self._lock:
                key = self._next_turn()
                state = self.pools.get(key) if key is not None else None
                if state is None:
                    self._wake.clear()
                    timeout = self._until_ready()
            if state is None:
                self._wake.wait(timeout)
                continue
            began = time.perf_counter()
            try:
                advanced = self._join_and_step(state)
            except Exception as error:  # noqa: BLE001: every request of the pool is told, the thread goes on
                for entry in [*state.entries.values()]:
                    entry.give(error)
                state.entries.clear()
                state.pool = RefinementPool(state.model)
                continue
            finally:
                self.busy_s += time.perf_counter() - began  # only this thread writes it
            self.waited_s += advanced.waited_s
            if advanced.joined:
                self.on_join(state.name, advanced.joined)
            if advanced.refined:
                self.on_step(state.name, advanced.refined)
            for entry, outcome in advanced.results:
                entry.give(outcome)

    def _next_turn(self) -> Hashable | None:
        """The next model whose pool has rows, or whose waiting requests may start now."""
        now = time.monotonic()
        for _ in range(len(self.turns)):
            key = self.turns[0]
            self.turns.rotate(-1)
            state = self.pools[key]
            if not state.has_work():
                if state.replaced:  # its rows are done: the old model is let go
                    del self.pools[key]
                    self.turns.remove(key)
                continue
            if state.entries or len(state.waiting) >= self.max_batch_size \
                    or now - state.waiting[0].arrived >= self.batch_wait_timeout_s:
                return key
        return None

    def _until_ready(self) -> float | None:
        """Seconds until an idle pool's oldest waiting request starts anyway; None when nothing waits."""
        oldest = [state.waiting[0].arrived for state in self.pools.values() if state.has_work() and state.waiting]
        if not oldest:
            return None
        return max(0.0, min(oldest) + self.batch_wait_timeout_s - time.monotonic())

    def _join_and_step(self, state: _ModelPool) -> _Advanced:
        pool, advanced = state.pool, _Advanced([])
        for row, entry in list(state.entries.items()):
            if entry.cancelled:  # a client that left, or a timeout: refined no more
                pool.leave(row)
                del state.entries[row]
        joining = []
        while state.waiting and len(state.entries) + len(joining) < self.max_batch_size:
            entry = state.waiting.popleft()
            if not entry.cancelled:
                joining.append(entry)
        if joining:
            now = time.monotonic()
            advanced.joined, advanced.waited_s = len(joining), sum(now - entry.arrived for entry in joining)
            rows = self._rows(pool, joining, advanced)
            state.entries.update((row, entry) for entry, row in zip(joining, rows) if row is not None)
            pool.join([row for row in rows if row is not None])
        if not len(pool):
            return advanced
        step = pool.step()
        advanced.refined = len(step.refined)
        finished = set(step.finished)
        shown = [row for row in step.refined if row in finished or state.entries[row].stream]
        for row, sequence in zip(shown, pool.sequences(shown)):
            advanced.results.append((state.entries[row], (sequence, row in finished)))
        for row in step.finished:
            del state.entries[row]
        return advanced

    @staticmethod
    def _rows(pool: RefinementPool, joining: list[_Entry], advanced: _Advanced) -> list[Row | None]:
        """The joining requests' rows, prepared together; when one is invalid (a ValueError that
        validation missed), each alone: that one is told why, the others join."""
        try:
            return pool.prepare([entry.item for entry in joining])
        except ValueError:
            pass
        rows: list[Row | None] = []
        for entry in joining:
            try:
                rows.extend(pool.prepare([entry.item]))
            except ValueError as error:
                advanced.results.append((entry, error))
                rows.append(None)
        return rows


def _unwrap(outcome) -> tuple[Keypoints, bool]:
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome
