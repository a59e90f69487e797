"""The scoring service (ctrsink.serve): valid, invalid and concurrent requests.

The load test starts uvicorn on a free loopback port in a thread and fires a bounded number of requests from
several client threads; every answer must equal the Ranker's own and none may be lost.
"""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from test_rank import some_requests, write_run  # noqa: E402

from ctrsink.rank import Ranker  # noqa: E402
from ctrsink.serve import Limits, create_app  # noqa: E402

LIMITS = Limits(max_candidates=40, max_history=300, max_body_bytes=64 * 1024, max_batch=8, max_wait_ms=3.0)


@pytest.fixture(scope="module")
def ranker(sample_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Ranker:
    run = write_run(
        sample_data_dir,
        tmp_path_factory.mktemp("serve") / "run",
        backbone="scratch:bert-tiny",
        use_sink=True,
        sink_signal="time_gap",
    )
    return Ranker.from_run(run)


@pytest.fixture(scope="module")
def requests(ranker: Ranker) -> list[dict]:
    from ctrsink.data import load_sample_set

    rows = load_sample_set(ranker.bundle.info["data_dir"]).splits["test"].to_pandas().to_dict("records")
    reqs = some_requests(ranker, rows, n=16, k=11)
    return [r.model_copy(update={"request_id": f"r{i}"}).model_dump() for i, r in enumerate(reqs)]


def expected(ranker: Ranker, body: dict) -> dict:
    from ctrsink.rank import RankRequest

    return ranker.rank_many([RankRequest.model_validate(body)])[0].to_dict()


def same(got: dict, want: dict) -> None:
    assert got["request_id"] == want["request_id"] and got["user_id"] == want["user_id"]
    assert [r["item_id"] for r in got["ranking"]] == [r["item_id"] for r in want["ranking"]]
    np.testing.assert_allclose(
        [r["logit"] for r in got["ranking"]], [r["logit"] for r in want["ranking"]], rtol=1e-4, atol=1e-5
    )


def test_valid_requests_and_health(ranker, requests, one_thread) -> None:
    with TestClient(create_app(ranker, LIMITS, "run")) as client:
        health = client.get("/health").json()
        assert (
            health["status"] == "ok" and health["reuse"] is True and health["items"] == len(ranker.item_ids)
        )
        for body in requests[:3]:
            answer = client.post("/rank", json=body)
            assert answer.status_code == 200, answer.text
            same(answer.json(), expected(ranker, body))
        # ids may come as numbers; extra whitespace in JSON is fine
        numeric = {**requests[0], "candidates": [int(c) for c in requests[0]["candidates"]]}
        assert client.post("/rank", json=numeric).status_code == 200
        assert client.get("/health").json()["requests"] == 4


def bad_bodies(body: dict) -> dict[str, tuple[dict | str, int, str]]:
    first = body["history"][0]
    return {
        "unknown candidate": ({**body, "candidates": ["nope"]}, 422, "unknown item id"),
        "unknown history item": ({**body, "history": [{**first, "item_id": "nope"}]}, 422, "unknown item id"),
        "empty history": ({**body, "history": []}, 422, "at least 1"),
        "history after at": ({**body, "at": first["timestamp"]}, 422, "strictly before"),
        "no candidates": ({**body, "candidates": []}, 422, "candidates"),
        "missing at": ({k: v for k, v in body.items() if k != "at"}, 422, "at: Field required"),
        "bad label": ({**body, "history": [{**first, "label": 2}]}, 422, "history.0.label"),
        "unknown field": ({**body, "cnadidates": []}, 422, "cnadidates"),
        "text timestamp": ({**body, "at": "soon"}, 422, "at:"),
        "too many candidates": ({**body, "candidates": body["candidates"] * 5}, 413, "at most 40"),
        "too long history": ({**body, "history": [first] * 301}, 413, "at most 300"),
        "huge body": ({**body, "user_id": "x" * 70_000}, 413, "body over"),
        "not json": ("{not json", 422, "json"),
        "not an object": ("[1, 2]", 422, "request"),
    }


def test_invalid_requests_get_4xx_with_a_message(ranker, requests, one_thread) -> None:
    with TestClient(create_app(ranker, LIMITS), raise_server_exceptions=False) as client:
        for name, (body, status, text) in bad_bodies(requests[0]).items():
            if isinstance(body, str):
                answer = client.post("/rank", content=body, headers={"content-type": "application/json"})
            else:
                answer = client.post("/rank", json=body)
            assert answer.status_code == status, (name, answer.text)
            detail = answer.json()["detail"]
            assert isinstance(detail, str) and text.lower() in detail.lower(), (name, detail)
        chunked = client.post("/rank", content=iter([b"{}"]), headers={"content-type": "application/json"})
        assert chunked.status_code == 411
        assert client.get("/rank").status_code == 405
        # the service is still fine after all that
        assert client.post("/rank", json=requests[0]).status_code == 200


def free_loopback_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def test_concurrent_requests_on_loopback_are_all_answered_right(ranker, requests, one_thread) -> None:
    import uvicorn

    want = {body["request_id"]: expected(ranker, body) for body in requests}
    sock = free_loopback_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(ranker, LIMITS), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started
        url = f"http://127.0.0.1:{port}"

        def client(worker: int) -> list[tuple[str, int, dict]]:
            out = []
            with httpx.Client(base_url=url, timeout=60) as c:
                for k in range(4):  # 16 workers x 4 = 64 requests, each request body sent 4 times overall
                    body = requests[(worker + 5 * k) % len(requests)]
                    answer = c.post("/rank", json=body)
                    out.append((body["request_id"], answer.status_code, answer.json()))
            return out

        with ThreadPoolExecutor(16) as pool:
            answers = [a for part in pool.map(client, range(16)) for a in part]
        assert len(answers) == 64
        for request_id, status, body in answers:
            assert status == 200, body
            same(body, want[request_id])
        health = httpx.get(f"{url}/health", timeout=10).json()
        assert health["requests"] == 64
        assert health["batches"] < 64  # concurrent requests really shared batches
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert not thread.is_alive()


def test_serve_binds_loopback_by_default() -> None:
    from ctrsink.cli import build_parser

    args = build_parser().parse_args(["serve", "--run", "R"])
    assert args.host == "127.0.0.1" and args.port == 8000 and Path(args.run) == Path("R")
