"""Run jobs on several ComfyUI servers at once; a server that fails gives its job back.

ComfyUI does the work; this only hands out jobs. One thread per server takes the next job from
a shared queue, prepares the server once per face (the workflow converted with that server's
/object_info, its model files checked, the photos uploaded) and renders the job there.
- The server stops answering (connection refused, a broken socket, no result within the
  timeout): the job goes back on the queue for the other servers and this server is dropped.
- The server lacks a model file or a node type, or answers what ComfyUI would not: it is
  dropped before it takes any job.
- The workflow itself fails (ComfyUI rejects the prompt or part of it, a node raises, the final
  output is not the image asked for), or a local error (a photo, the disk): the run stops, as the
  same would happen on every server.
Every way a worker thread ends is an event for the main loop, so a run never waits on a thread
that is gone.
Finished images are files on disk, so stopping at any point loses only the images in flight.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable

from ..client.comfy import ComfyClient, ComfyError, ExecutionFailed, PromptRejected
from ..errors import F2DError, ModelFilesMissing
from ..client.workflow import MissingNodeTypes

# what a server can be dropped for: the others may well not have the same problem
SERVER_PROBLEMS = (ComfyError, MissingNodeTypes, ModelFilesMissing)


class NoServerLeft(F2DError):
    """Every server failed while jobs remained."""


class Dispatcher:
    """prepare(client, job) -> what render needs for the job's face (prepared once per face and
    server); render(client, prepared, job) -> info dict."""

    def __init__(self, urls: list[str], prepare: Callable, render: Callable, max_attempts: int = 3,
                 client_factory: Callable[[str], ComfyClient] = ComfyClient):
        if not urls:
            raise F2DError("no ComfyUI server given: pass --server URL (repeat it for several servers).")
        self.urls, self.prepare, self.render = list(dict.fromkeys(urls)), prepare, render
        self.max_attempts, self.client_factory = max_attempts, client_factory
        self.clients, self.busy, self.down = {}, set(), {}
        self._stop, self._lock = threading.Event(), threading.Lock()

    def run(self, jobs: list, on_done: Callable | None = None, on_down: Callable | None = None) -> dict:
        """Render every job; returns {url: number of jobs it finished}. on_done(job, url, info),
        on_down(url, reason) are called from this thread."""
        todo, events, attempts = queue.Queue(), queue.Queue(), {}
        for job in jobs:
            todo.put(job)
        counts = {u: 0 for u in self.urls}
        self._stop.clear()
        threads = [threading.Thread(target=self._worker, args=(u, todo, events, attempts), daemon=True,
                                    name=f"f2d-eval {u}") for u in self.urls]
        for t in threads:
            t.start()
        alive, done = set(self.urls), 0
        try:
            while done < len(jobs):
                try:
                    event = events.get(timeout=0.5)
                except queue.Empty:
                    if not any(t.is_alive() for t in threads) and events.empty():
                        raise F2DError(f"every server's worker stopped with {len(jobs) - done} image(s) "
                                       "not made and no reason given; this is a bug, please report it.")
                    continue
                kind, url = event[0], event[1]
                if kind == "done":
                    done, counts[url] = done + 1, counts[url] + 1
                    if on_done:
                        on_done(event[2], url, event[3])
                elif kind == "down":
                    alive.discard(url)
                    self.down[url] = event[2]
                    if on_down:
                        on_down(url, event[2])
                    if not alive:
                        raise NoServerLeft(self._no_server_message(len(jobs) - done))
                else:  # fatal
                    raise event[2]
        except BaseException:
            self._stop.set()
            self._cancel_busy()
            raise
        self._stop.set()
        return counts

    def _no_server_message(self, left: int) -> str:
        if len(self.down) == 1:
            (url, reason), = self.down.items()
            head = f"ComfyUI at {url} failed: {reason}"
        else:
            head = "every ComfyUI server failed:\n" + "\n".join(f"  {u}: {r}" for u, r in self.down.items())
        return (f"{head}\n{left} image(s) were not made. The finished ones are kept: fix the server(s) and run "
                "the same command again to make only what is missing.")

    def _cancel_busy(self) -> None:
        with self._lock:
            busy = [self.clients[u] for u in self.busy if u in self.clients]
        for client in busy:
            client.cancel()

    def _worker(self, url, todo, events, attempts) -> None:
        try:
            self._serve(url, todo, events, attempts)
        except Exception as e:  # a bug: stop the run with it rather than end this thread unnoticed
            events.put(("fatal", url, e))

    def _serve(self, url, todo, events, attempts) -> None:
        try:
            client = self.client_factory(url)
            client.object_info()  # fails at once when nothing answers there
            client.open_ws()
        except ComfyError as e:
            return events.put(("down", url, str(e)))
        except Exception as e:  # an answer nothing here expected: this server is not usable
            return events.put(("down", url, f"{type(e).__name__}: {e}"))
        self.clients[url] = client
        apis = {}
        try:
            while not self._stop.is_set():
                try:
                    job = todo.get(timeout=0.05)
                except queue.Empty:
                    continue
                if self._stop.is_set():
                    return todo.put(job)
                try:
                    if job.face not in apis:
                        apis[job.face] = self.prepare(client, job)
                except SERVER_PROBLEMS as e:
                    todo.put(job)
                    return events.put(("down", url, f"cannot run the workflow there: {e}"))
                except F2DError as e:  # the workflow or an input: the same on every server
                    return events.put(("fatal", url, e))
                except Exception as e:  # most likely an answer of this server that nothing expected
                    todo.put(job)
                    return events.put(("down", url, f"cannot run the workflow there: {type(e).__name__}: {e}"))
                with self._lock:
                    attempts[job] = attempts.get(job, 0) + 1
                    self.busy.add(url)
                try:
                    info = self.render(client, apis[job.face], job)
                except (PromptRejected, ExecutionFailed) as e:
                    return events.put(("fatal", url, e))
                except ComfyError as e:
                    client.cancel()  # a server that only hung would otherwise go on with it
                    if attempts[job] >= self.max_attempts:
                        return events.put(("fatal", url, F2DError(
                            f"{job.stem} failed on {attempts[job]} servers in a row (last: {url}: {e}); stopping.")))
                    todo.put(job)
                    return events.put(("down", url, str(e)))
                except Exception as e:  # a bug or a local error (disk full, ...): stop, do not spread it
                    return events.put(("fatal", url, e))
                finally:
                    with self._lock:
                        self.busy.discard(url)
                events.put(("done", url, job, info))
        finally:
            client.close()
