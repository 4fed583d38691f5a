"""Every endpoint needs a login, POST also needs the XSRF token, and no name reaches outside the store."""

import json
import time
from http.cookies import SimpleCookie
from urllib.parse import urlencode

import pytest
from jupyter_server.utils import url_path_join

from lora_magic.core.store import RunStore

ENDPOINTS = [
    ("GET", "lora-magic/runs"),
    ("GET", "lora-magic/runs/training"),
    ("GET", "lora-magic/runs/training/events?offset=0"),
    ("POST", "lora-magic/runs/training/stop"),
    ("GET", "lora-magic/notebook-template"),
]


def make_run(store, name, status="running", config=None):
    store.create(name, {"name": name, "status": status, "created": time.time(), "config": config or {}})
    store.append_event(name, {"type": "status", "status": status, **(config or {})})


@pytest.fixture
def training(store):
    make_run(store, "training")
    return store


async def raw_fetch(http_server_client, jp_base_url, path, method="GET", **kwargs):
    body = b"" if method == "POST" else None
    return await http_server_client.fetch(
        url_path_join(jp_base_url, path),
        method=method,
        body=body,
        raise_error=False,
        follow_redirects=False,
        **kwargs,
    )


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
async def test_unauthenticated_requests_are_forbidden(
    http_server_client, jp_base_url, training, method, path
):
    response = await raw_fetch(http_server_client, jp_base_url, path, method)
    assert response.code == 403
    assert not training.stop_requested("training")


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
async def test_a_wrong_token_is_forbidden(http_server_client, jp_base_url, training, method, path):
    headers = {"Authorization": "token not-the-token"}
    response = await raw_fetch(http_server_client, jp_base_url, path, method, headers=headers)
    assert response.code == 403
    assert not training.stop_requested("training")


async def login(http_server_client, jp_base_url, token) -> dict[str, str]:
    """Log in through the login form, as a browser does: returns the session's cookies."""
    cookies = SimpleCookie()
    page = await raw_fetch(http_server_client, jp_base_url, "login")
    cookies.load(page.headers["Set-Cookie"])
    form = urlencode({"password": token, "_xsrf": cookies["_xsrf"].value})
    reply = await http_server_client.fetch(
        url_path_join(jp_base_url, "login"),
        method="POST",
        body=form,
        headers={"Cookie": "; ".join(f"{k}={v.value}" for k, v in cookies.items())},
        raise_error=False,
        follow_redirects=False,
    )
    assert reply.code == 302
    for header in reply.headers.get_list("Set-Cookie"):
        cookies.load(header)
    return {key: morsel.value for key, morsel in cookies.items()}


async def test_post_with_a_login_cookie_but_no_xsrf_token_is_refused(
    http_server_client, jp_base_url, jp_serverapp, training
):
    cookies = await login(http_server_client, jp_base_url, jp_serverapp.identity_provider.token)
    cookie_header = "; ".join(f"{k}={v}" for k, v in cookies.items())

    # The cookie alone is a valid login for reading ...
    listing = await raw_fetch(
        http_server_client, jp_base_url, "lora-magic/runs", headers={"Cookie": cookie_header}
    )
    assert listing.code == 200
    # ... but a state change without the XSRF token is refused (a cross-site form could send the cookie),
    refused = await raw_fetch(
        http_server_client,
        jp_base_url,
        "lora-magic/runs/training/stop",
        "POST",
        headers={"Cookie": cookie_header},
    )
    assert refused.code == 403
    assert not training.stop_requested("training")
    wrong = await raw_fetch(
        http_server_client,
        jp_base_url,
        "lora-magic/runs/training/stop",
        "POST",
        headers={"Cookie": cookie_header, "X-XSRFToken": "2|00000000|00000000000000000000000000000000|1"},
    )
    assert wrong.code == 403
    assert not training.stop_requested("training")
    # and accepted with it, as the Lab page sends it.
    accepted = await raw_fetch(
        http_server_client,
        jp_base_url,
        "lora-magic/runs/training/stop",
        "POST",
        headers={"Cookie": cookie_header, "X-XSRFToken": cookies["_xsrf"]},
    )
    assert accepted.code == 202
    assert training.stop_requested("training")


@pytest.fixture
def outside(tmp_path, runs_dir):
    """Runs that lie outside the store, and links into them from inside it."""
    make_run(RunStore(runs_dir), "training")
    sibling = RunStore(runs_dir.parent / (runs_dir.name + "-sibling"))  # shares the store's name as prefix
    make_run(sibling, "secret", config={"marker": LEAK})
    elsewhere = RunStore(tmp_path / "elsewhere")
    make_run(elsewhere, "private", config={"marker": LEAK})
    (runs_dir / "linked").symlink_to(elsewhere.root / "private", target_is_directory=True)
    # A real run folder whose files are links out of it.
    make_run(RunStore(runs_dir), "leaky")
    for file in ("run.json", "events.jsonl"):
        (runs_dir / "leaky" / file).unlink()
        (runs_dir / "leaky" / file).symlink_to(elsewhere.root / "private" / file)
    (runs_dir / "leaky" / "stop-request").symlink_to(tmp_path / "written-outside")
    return [sibling.root / "secret", elsewhere.root / "private", tmp_path]


LEAK = "content-of-a-run-outside-the-store"
TRAVERSALS = [
    "..",
    ".",
    "..%2F..%2Fetc",
    "%2E%2E",
    "%2E%2E%2Fruns-sibling%2Fsecret",
    "..%2Fruns-sibling%2Fsecret",
    "training%2F..%2F..%2Fruns-sibling%2Fsecret",
    "%2Fetc%2Fpasswd",
    "%2Ftmp",
    "linked",
    "leaky",
    "training%00",
    "%00",
    "tra%00ining",
    "%C0%AE%C0%AE",  # overlong UTF-8 for '..'
    "~",
    ".hidden",
    "a" * 101,
]


@pytest.mark.parametrize("name", TRAVERSALS)
async def test_traversal_attempts_are_refused(http_server_client, jp_base_url, jp_auth_header, outside, name):
    for method, suffix in [("GET", ""), ("GET", "/events"), ("POST", "/stop")]:
        path = f"lora-magic/runs/{name}{suffix}"
        response = await raw_fetch(http_server_client, jp_base_url, path, method, headers=jp_auth_header)
        assert response.code in (400, 404), (method, path)
        assert LEAK not in response.body.decode(errors="replace")
    for folder in outside[:2]:
        assert not (folder / "stop-request").exists()
    assert not (outside[2] / "written-outside").exists()


async def test_listing_shows_only_runs_inside_the_store(jp_fetch, outside):
    reply = json.loads((await jp_fetch("lora-magic", "runs")).body)
    assert [run["name"] for run in reply["runs"]] == ["training"]


async def test_unencoded_dot_segments_do_not_route(http_server_client, jp_base_url, jp_auth_header, outside):
    for path in [
        "lora-magic/runs/../runs-sibling/secret",
        "lora-magic/runs/training/../../runs-sibling/secret/stop",
    ]:
        for method in ("GET", "POST"):
            response = await raw_fetch(http_server_client, jp_base_url, path, method, headers=jp_auth_header)
            assert response.code in (400, 404), (path, method)
    assert not (outside[0] / "stop-request").exists()
