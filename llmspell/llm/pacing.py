"""Waits to a tenth of a millisecond, for the local LLM server's latencies.

The event loop's own timers are too coarse for a model's latency: uvloop's (libuv's) count in
whole milliseconds from a clock cached per loop iteration, so a 50 ms answer went out between
49.5 and 51.8 ms after its request arrived, sometimes early, 0.7 ms late on average: a latency
the scenario sets must be the one the client sees, never less. Here one Linux timerfd per event
loop, armed for the earliest deadline, wakes the loop when it expires (the loop watches the fd
like a socket): no thread, no polling. Where there is no timerfd, the loop's own timer serves,
and a wake-up that comes early waits again.

    pacer = Pacer().open()          # on the server's loop, at its start
    await pacer.until(arrived + latency)
    pacer.close()                   # at its end
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import heapq
import itertools
import os
import time

__all__ = ["Pacer"]

_CLOCK_MONOTONIC = 1  # time.monotonic()'s clock on Linux
_TFD_NONBLOCK, _TFD_CLOEXEC, _TFD_TIMER_ABSTIME = os.O_NONBLOCK, os.O_CLOEXEC, 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.timerfd_create  # noqa: B018 - Linux only
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


class Pacer:
    """Wakes waiters at their deadlines on the event loop it was opened on: its timerfd, armed
    for the earliest deadline, or (no timerfd) the loop's own timer. Closed by its owner."""

    def __init__(self) -> None:
        self._fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._armed = 0.0  # the deadline the fd is set for (0: none)

    def open(self) -> Pacer:
        """Watch a timerfd on the running loop (when this system has one)."""
        loop = asyncio.get_running_loop()
        if _LIBC is None or self._loop is not None:
            return self
        fd = _LIBC.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if fd < 0:
            return self
        try:
            loop.add_reader(fd, self._expired)
        except NotImplementedError:  # a loop that cannot watch a file descriptor
            os.close(fd)
            return self
        self._fd, self._loop = fd, loop
        return self

    @property
    def precise(self) -> bool:
        """Whether it waits on a timerfd (open, on a system that has one)."""
        return self._loop is not None

    def close(self) -> None:
        if self._loop is None:
            return
        if not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self._fd, self._loop, self._armed = -1, None, 0.0
        for _, _, waiter in self._waiting:
            waiter.cancel()
        self._waiting.clear()

    async def until(self, deadline: float) -> None:
        """Return at `deadline` (`time.monotonic()` seconds), never before it."""
        if self._loop is not asyncio.get_running_loop():  # not open, or open on another loop
            while (remaining := deadline - time.monotonic()) > 0:  # noqa: ASYNC110 - a clock
                await asyncio.sleep(remaining)
            return
        if deadline <= time.monotonic():
            return
        waiter = self._loop.create_future()
        heapq.heappush(self._waiting, (deadline, next(self._order), waiter))
        if not self._armed or deadline < self._armed:
            self._arm(deadline)
        await waiter

    def _expired(self) -> None:
        with contextlib.suppress(BlockingIOError):  # re-armed since it expired: spurious
            os.read(self._fd, 8)
        self._armed = 0.0
        now = time.monotonic()
        while self._waiting and self._waiting[0][0] <= now:
            waiter = heapq.heappop(self._waiting)[2]
            if not waiter.done():  # a cancelled one (its client went away) is just dropped
                waiter.set_result(None)
        if self._waiting:
            self._arm(self._waiting[0][0])

    def _arm(self, deadline: float) -> None:
        assert _LIBC is not None
        seconds, fraction = divmod(deadline, 1.0)
        spec = _Itimerspec(_Timespec(0, 0), _Timespec(int(seconds), int(fraction * 1e9)))
        if _LIBC.timerfd_settime(self._fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None):
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")
        self._armed = deadline
