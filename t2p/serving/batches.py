"""Fair batches for Serve: refinement runs that take turns, one step each.

A request's cost is its steps x frames. Handing every waiting request to one `generate` call (what
`@serve.batch` did) made a 1-step request batched with, or queued behind, a 100-step one wait for
all 100 steps. Here:
- requests are grouped by model and by step count in powers of two (1, 2, 3-4, 5-8, ..., 65-128).
  `generate` ends every item of a batch at the same step, so an item with s steps waits fewer
  than s more steps for its own schedule to begin: batches never mix models, and at most double an
  item's steps;
- the running batches ("runs") of different groups take turns, one refinement step each
  (`t2p.generation.refinement_steps`): a cheap run waits for at most one step of each other group per
  step of its own, never for a whole expensive run;
- a group's next run forms once its current one is done, from up to `max_batch_size` waiting
  items, as soon as it is full or its oldest item has waited `batch_wait_timeout_s`.
Every step runs on one worker thread, one at a time: on a CPU one step's matrix products take
every core. Sentences and corrections send their requests here too (`generate_all`), so they share
the batches of one-sign requests. A streaming request gets its sequence after each of its steps.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Hashable, Iterator, Sequence

from t2p.generation import Generator, RefinementStep, SignRequest, generate, refinement_steps
from t2p.model import T2PModel
from t2p.pose import Keypoints


def step_group(steps: int) -> int:
    """The power of two a step count rounds up to: the runs of one group end every item at once."""
    return 1 << max(0, steps - 1).bit_length()


@dataclass(eq=False)
class _Entry:
    item: SignRequest
    stream: bool
    arrived: float
    out: asyncio.Queue = field(default_factory=asyncio.Queue)  # (Keypoints, last) per step streamed; or an error
    cancelled: bool = False


class _Run:
    """One batch of one group, advanced one step at a time on the worker thread."""

    def __init__(self, model: T2PModel, entries: list[_Entry]):
        self.model, self.entries = model, entries
        self.steps: Iterator[RefinementStep] | None = None

    def advance(self) -> RefinementStep | list[Keypoints | ValueError]:
        """The next step; on the first, a ValueError that validation missed sends each item alone
        (the items' results then come at once, as a list)."""
        if self.steps is None:
            items = [entry.item for entry in self.entries]
            self.steps = refinement_steps(self.model, items, every_step=any(entry.stream for entry in self.entries),
                                          wanted=lambda: [not entry.cancelled for entry in self.entries])
            try:
                return next(self.steps)
            except ValueError:
                if len(items) == 1:
                    raise
                return [_alone(self.model, item) for item in items]
        return next(self.steps)


def _alone(model: T2PModel, item: SignRequest) -> Keypoints | ValueError:
    try:
        (sequence,) = generate(model, [item])
        return sequence
    except ValueError as error:
        return error


class FairBatcher:
    """Groups of waiting items, and the runs that take turns on one worker thread (see the module)."""

    def __init__(self, max_batch_size: int, batch_wait_timeout_s: float,
                 on_run: Callable[[Hashable, int], None] = lambda group, size: None,
                 on_step: Callable[[Hashable, int], None] = lambda group, rows: None):
        self.max_batch_size, self.batch_wait_timeout_s = max_batch_size, batch_wait_timeout_s
        self.on_run = on_run    # told of every run formed: its group and size (Serve's batch stats)
        self.on_step = on_step  # told of every step taken: its group and how many requests it refined
        self.busy_s = 0.0    # seconds the worker thread spent in refinement steps
        self.waited_s = 0.0  # seconds the items waited, summed, from their arrival to their run's forming
        self.waiting: dict[Hashable, deque[_Entry]] = {}
        self.models: dict[Hashable, T2PModel] = {}
        self.running: dict[Hashable, _Run] = {}
        self.turns: deque[Hashable] = deque()  # the running groups, in the order they take their steps
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="t2p-refine")
        self._wake: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None

    async def generate(self, model: T2PModel, key: Hashable, item: SignRequest) -> Keypoints:
        """`item`'s sequence, from the next run of its group. `key`: the model's name (batches never mix models)."""
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
        """Several items at once (a sentence's signs, its transitions, a correction's window), each
        in the runs of its own group."""
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
        """Stop the loop and the worker thread (`wait`: until the thread has ended)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
        self.worker.shutdown(wait=wait, cancel_futures=True)

    # --- the loop ---------------------------------------------------------------------------

    def _submit(self, model: T2PModel, key: Hashable, item: SignRequest, stream: bool) -> _Entry:
        steps = model.schedule_config.steps if item.steps is None else item.steps
        group = (key, step_group(steps))
        entry = _Entry(item, stream, time.monotonic())
        self.waiting.setdefault(group, deque()).append(entry)
        self.models[group] = model
        if self._loop_task is None or self._loop_task.done():
            self._wake = asyncio.Event()
            self._loop_task = asyncio.get_running_loop().create_task(self._loop())
        self._wake.set()
        return entry

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._start_ready_runs()
            if not self.running:
                self._wake.clear()
                try:  # until an item arrives, or the oldest waiting one has waited long enough
                    await asyncio.wait_for(self._wake.wait(), self._until_ready())
                except asyncio.TimeoutError:
                    pass
                continue
            group = self.turns[0]
            self.turns.rotate(-1)
            run = self.running[group]
            if all(entry.cancelled for entry in run.entries):  # nobody waits for any of it: no more steps
                self._finish(group)
                continue
            try:
                result = await loop.run_in_executor(self.worker, self._advance, run)
            except Exception as error:  # noqa: BLE001: every item of the run is told, the loop goes on
                self._finish(group)
                for entry in run.entries:
                    entry.out.put_nowait(error)
                continue
            if isinstance(result, list):  # each item alone, after a ValueError
                self._finish(group)
                for entry, outcome in zip(run.entries, result):
                    entry.out.put_nowait(outcome if isinstance(outcome, ValueError) else (outcome, True))
                continue
            self.on_step(group, result.rows)
            if result.done:
                self._finish(group)
            for index, entry in enumerate(run.entries):
                if result.done or (entry.stream and result.refined[index]):
                    entry.out.put_nowait((result.sequences[index], result.done))

    def _advance(self, run: _Run):
        began = time.perf_counter()
        try:
            return run.advance()
        finally:
            self.busy_s += time.perf_counter() - began  # only the worker thread writes it

    def _start_ready_runs(self) -> None:
        now = time.monotonic()
        for group, queue in list(self.waiting.items()):
            while queue and queue[0].cancelled:
                queue.popleft()
            if not queue:
                del self.waiting[group]
                continue
            if group in self.running:
                continue
            if len(queue) < self.max_batch_size and now - queue[0].arrived < self.batch_wait_timeout_s:
                continue
            entries = []
            while queue and len(entries) < self.max_batch_size:
                entry = queue.popleft()
                if not entry.cancelled:
                    entries.append(entry)
            if entries:
                self.waited_s += sum(now - entry.arrived for entry in entries)
                self.running[group] = _Run(self.models[group], entries)
                self.turns.append(group)
                self.on_run(group, len(entries))

    def _until_ready(self) -> float | None:
        """Seconds until the oldest waiting item's batch forms anyway; None when nothing waits."""
        if not self.waiting:
            return None
        oldest = min(queue[0].arrived for queue in self.waiting.values() if queue)
        return max(0.0, oldest + self.batch_wait_timeout_s - time.monotonic())

    def _finish(self, group: Hashable) -> None:
        del self.running[group]
        self.turns.remove(group)


def _unwrap(outcome) -> tuple[Keypoints, bool]:
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome
