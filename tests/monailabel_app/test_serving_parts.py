"""The serve middleware's pure parts (lib/serving), without a server: token, body limit, ids, params, queue."""

import asyncio
import time

import pytest
from starlette.datastructures import Headers

from lib.request_params import RequestError
from lib.serving.auth import authorized, is_loopback, read_token
from lib.serving.body_limit import body_problem
from lib.serving.generation_queue import GenerationQueue, QueueFull
from lib.serving.infer_form import parsed_params
from lib.serving.routes import Route, route, unplain_id


def test_loopback_hosts():
    assert [is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "127.8.0.1")] == [True] * 4
    assert [is_loopback(h) for h in ("0.0.0.0", "10.0.0.5", "gpu-host", "::")] == [False] * 4


def test_tokens_too_short_are_refused_and_compared_exactly(tmp_path):
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(ValueError, match="--token-file"):
        read_token(tmp_path / "short")
    (tmp_path / "good").write_text("x" * 30 + "\n")
    token = read_token(tmp_path / "good")
    assert token == "x" * 30
    assert authorized(Headers({"authorization": f"Bearer {token}"}), token)
    assert authorized(Headers({"authorization": f"bearer {token}"}), token)
    assert not authorized(Headers({"authorization": f"Bearer {token}y"}), token)
    assert not authorized(Headers({"authorization": f"Basic {token}"}), token)
    assert not authorized(Headers({}), token)


def test_body_problems():
    assert body_problem(Headers({}), 100) is None
    assert body_problem(Headers({"content-length": "100"}), 100) is None
    assert body_problem(Headers({"content-length": "101"}), 100)[0] == 413
    assert body_problem(Headers({"content-length": "-1"}), 100)[0] == 400
    assert body_problem(Headers({"transfer-encoding": "chunked"}), 100)[0] == 411


def test_routes_and_plain_ids():
    assert route("GET", "/info/") is Route.INFO and route("POST", "/infer/synthesize") is Route.INFER
    assert route("POST", "/infer/a/b") is Route.NOT_OFFERED and route("GET", "/infer/synthesize") is Route.NOT_OFFERED
    assert (
        route("PUT", "/datastore/image") is Route.DATASTORE_WRITE and route("PUT", "/datastore/") is Route.NOT_OFFERED
    )
    assert unplain_id({"image": "ct_01.nii"}, "/datastore/image") is None
    assert str(unplain_id({}, "/datastore/image")).startswith("image:")
    for bad in ("../x", "/etc/passwd", ".hidden", "a/b", "..", "a\\b"):
        assert str(unplain_id({"image": "ct", "tag": bad}, "/datastore/label")).startswith("tag:"), bad


def test_params_must_be_an_object_naming_no_file():
    assert parsed_params('{"seed": 3}') == {"seed": 3}
    for text in ("{oops", "[1]", "null", "3", '{"image": "/tmp/tmpabcdefgh.nii.gz"}', '{"label": "x"}'):
        with pytest.raises(RequestError, match="^params:"):
            parsed_params(text)


def test_queue_refuses_beyond_its_capacity_and_runs_in_order():
    queue, order = GenerationQueue(2), []

    def work(n: int):
        time.sleep(0.05)
        order.append(n)
        return n

    async def request(n: int):
        with queue.place():
            return await queue.run(lambda: work(n))

    async def main():
        tasks = [asyncio.create_task(request(n)) for n in range(3)]
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(main())
    assert results[:2] == [0, 1] and isinstance(results[2], QueueFull) and results[2].retry_after_s >= 1
    assert order == [0, 1] and queue.status() == {"length": 0, "capacity": 2}
