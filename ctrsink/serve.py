"""`ctrsink serve`: the Ranker behind HTTP (FastAPI + uvicorn), bound to 127.0.0.1 unless told otherwise.

    POST /rank     a request as in `ctrsink.rank` -> {"request_id", "user_id", "ranking": [{"item_id", "score",
                   "logit"}, ...]} best first
    GET  /health   {"status": "ok", the run, its model, whether candidates share the user side, cache, queue}

Every request is validated before it is queued: its shape and types by pydantic, then against the run (unknown
items, history not before `at`, too short a history) -> 422; over the size limits -> 413 (body, candidates,
history); a body without Content-Length -> 411. Each error answer is {"detail": "<one line>"}.

Micro-batching: handlers put requests on an asyncio queue; one collector takes the first waiting request, then
whatever else arrives within `max_wait_ms` (up to `max_batch` requests or `max_batch_candidates` candidates) and
scores them together with `Ranker.rank_many` in the single scoring thread, so the event loop keeps accepting
requests while the model runs and concurrent requests share batches (their history fields are encoded together).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ctrsink.rank import Ranker, Ranking, RankRequest, RankRequestError, errors_message

log = logging.getLogger("ctrsink.serve")


@dataclass(frozen=True)
class Limits:
    max_candidates: int = 1000
    max_history: int = 5000
    max_body_bytes: int = 1 << 20
    max_batch: int = 32  # requests scored together
    max_batch_candidates: int = 4096
    max_wait_ms: float = 2.0  # how long the first request of a batch waits for company


class ServeError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


class MicroBatcher:
    """The request queue and its collector; scoring runs in one worker thread."""

    def __init__(self, ranker: Ranker, limits: Limits) -> None:
        self.ranker, self.limits = ranker, limits
        self.queue: asyncio.Queue[tuple[RankRequest, asyncio.Future[Ranking]]] = asyncio.Queue()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ctrsink-score")
        self.batches = 0
        self.requests = 0

    async def submit(self, req: RankRequest) -> Ranking:
        future: asyncio.Future[Ranking] = asyncio.get_running_loop().create_future()
        await self.queue.put((req, future))
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect(loop)
            try:
                results = await loop.run_in_executor(self.pool, self._score, [req for req, _ in batch])
            except (
                Exception
            ) as exc:  # the pool itself failed (shutting down): answer, never leave a client waiting
                results = [exc] * len(batch)
            self.batches += 1
            self.requests += len(batch)
            for (_, future), result in zip(batch, results):
                if future.done():  # the client went away
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    async def _collect(self, loop: asyncio.AbstractEventLoop) -> list[tuple[RankRequest, asyncio.Future]]:
        batch = [await self.queue.get()]
        size = len(batch[0][0].candidates)
        deadline = loop.time() + self.limits.max_wait_ms / 1000.0
        while len(batch) < self.limits.max_batch and size < self.limits.max_batch_candidates:
            try:
                item = self.queue.get_nowait()  # already waiting: no timer needed
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            batch.append(item)
            size += len(item[0].candidates)
        return batch

    def _score(self, reqs: list[RankRequest]) -> list[Ranking | BaseException]:
        try:
            return list(self.ranker.rank_many(reqs))
        except Exception:  # keep one failing request from failing its batch-mates: score them alone
            log.exception("batch of %d failed; scoring its requests one at a time", len(reqs))
            out: list[Ranking | BaseException] = []
            for req in reqs:
                try:
                    out.append(self.ranker.rank_many([req])[0])
                except Exception as exc:
                    out.append(exc)
            return out


def check_size(req: RankRequest, limits: Limits) -> None:
    if len(req.candidates) > limits.max_candidates:
        raise ServeError(
            413, f"candidates: {len(req.candidates)} given, at most {limits.max_candidates} per request"
        )
    if len(req.history) > limits.max_history:
        raise ServeError(413, f"history: {len(req.history)} behaviors given, at most {limits.max_history}")


def create_app(ranker: Ranker, limits: Limits | None = None, run: str = "") -> FastAPI:
    """The service around a loaded Ranker (tests build it directly; `serve` loads the run)."""
    limits = limits or Limits()
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher = MicroBatcher(ranker, limits)
        task = asyncio.create_task(batcher.run())
        state["batcher"] = batcher
        try:
            yield
        finally:
            task.cancel()
            batcher.pool.shutdown(wait=True)

    app = FastAPI(title="ctrsink", lifespan=lifespan)

    @app.middleware("http")
    async def body_limit(request: Request, call_next):
        # checked before the body is read, so an oversized body is never parsed
        if request.method == "POST":
            length = request.headers.get("content-length")
            if length is None:
                return _error(411, "a Content-Length header is required")
            if not length.isdigit() or int(length) > limits.max_body_bytes:
                return _error(413, f"request body over {limits.max_body_bytes} bytes")
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, errors_message(exc.errors()))

    @app.exception_handler(ServeError)
    async def refused(_: Request, exc: ServeError) -> JSONResponse:
        return _error(exc.status, exc.detail)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        batcher: MicroBatcher = state["batcher"]
        cfg = ranker.bundle.cfg
        return {
            "status": "ok",
            "run": run,
            "model": cfg.model,
            "backbone": cfg.backbone if cfg.model == "ctrsink" else None,
            "items": len(ranker.item_ids),
            "reuse": ranker.reuse,
            "reuse_note": ranker.reuse_note,
            "cache": ranker.cache_info(),
            "queued": batcher.queue.qsize(),
            "batches": batcher.batches,
            "requests": batcher.requests,
            "limits": limits.__dict__,
        }

    @app.post("/rank")
    async def rank(req: RankRequest) -> dict[str, Any]:
        check_size(req, limits)
        try:
            ranker.check(req)
        except RankRequestError as exc:
            raise ServeError(422, str(exc)) from None
        ranking = await state["batcher"].submit(req)
        return ranking.to_dict()

    return app


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def serve(
    run_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    checkpoint: str = "best",
    limits: Limits | None = None,
) -> None:
    """Load the run and serve it until interrupted."""
    import uvicorn

    ranker = Ranker.from_run(run_dir, checkpoint)
    log.info("serving %s on http://%s:%d (reuse: %s)", run_dir, host, port, ranker.reuse_note or "yes")
    uvicorn.run(create_app(ranker, limits, str(run_dir)), host=host, port=port, log_level="info")
