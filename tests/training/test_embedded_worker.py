"""Without Redis, ``./run serve`` (``python -m kalshiflow_site.serve``) runs daphne and a real
Celery worker beside it over kombu's filesystem transport: starting a run from the admin only
queues it (the request returns at once), the worker trains it, and the run page follows it
live — in a real browser too (headless Chromium on the served site, screenshots under
var/test-artifacts/admin/)."""

from __future__ import annotations

import http.cookiejar
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from apps.training.models import ModelStatus, RLModel
from tests.conftest import REPO_ROOT
from tests.dashboard import test_browser as browser
from tests.dashboard.conftest import STAFF_PASSWORD
from tests.training.conftest import small_spec

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]
ARTIFACTS = REPO_ROOT / "var" / "test-artifacts" / "admin"
chromium = browser.chromium


@dataclass
class Served:
    url: str
    process: subprocess.Popen
    var_dir: Path
    log: Path


def wait_for(predicate, *, timeout_s: float, what: str, log: Path | None = None) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise AssertionError(f"{what} not within {timeout_s:g} s\n{tail}")
        time.sleep(0.2)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """``python -m kalshiflow_site.serve`` on a free port and the test database, without
    Redis (its queue is a folder under its own var/)."""
    port = browser.free_port()
    var_dir = tmp_path / "serve-var"
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")
    }
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "kalshiflow_site.settings",
            "DATABASE_URL": browser.database_url(),
            "RL_VAR_DIR": str(var_dir),
            "SECRET_KEY": "embedded-worker-test-secret-key-not-for-production",
            "RL_TRAINING_MAX_CONCURRENT": "1",
        }
    )
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "kalshiflow_site.serve", "--port", str(port)],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def listening() -> bool:
        assert process.poll() is None, log.read_text()
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_for(listening, timeout_s=60, what="daphne listening", log=log)
        # The worker says "<name> ready." once it consumes the queue.
        wait_for(
            lambda: re.search(r"embedded@\S+ ready\.", log.read_text()) is not None,
            timeout_s=90,
            what="the embedded worker ready",
            log=log,
        )
        yield Served(f"http://127.0.0.1:{port}", process, var_dir, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None


class Session:
    """A logged-in admin session over plain HTTP (cookies and CSRF tokens as a browser)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), NoRedirect()
        )

    def request(self, path: str, data: dict | None = None) -> tuple[int, str, dict]:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        try:
            with self.opener.open(self.base + path, body, timeout=60) as response:
                return response.status, response.read().decode(), dict(response.headers)
        except urllib.error.HTTPError as exc:  # 302 (not followed) and errors
            return exc.code, exc.read().decode(), dict(exc.headers)

    def csrf(self, page: str) -> str:
        match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        assert match, page[:2000]
        return match.group(1)

    def login(self, username: str) -> None:
        _, page, _ = self.request("/admin/login/")
        status, _, headers = self.request(
            "/admin/login/?next=/admin/",
            {
                "username": username,
                "password": STAFF_PASSWORD,
                "csrfmiddlewaretoken": self.csrf(page),
                "next": "/admin/",
            },
        )
        assert status == 302 and headers["Location"] == "/admin/", status


def run_form(markets: list[str], *, name: str, timesteps: int) -> dict[str, str]:
    spec = small_spec(markets, name=name, total_timesteps=timesteps)
    return {
        "name": spec.name,
        "algorithm": spec.algorithm,
        "markets": ",".join(spec.markets),
        "train_start": spec.train_start.isoformat(),
        "train_end": spec.train_end.isoformat(),
        "eval_start": spec.eval_start.isoformat(),
        "eval_end": spec.eval_end.isoformat(),
        "total_timesteps": str(spec.total_timesteps),
        "seed": str(spec.seed),
        "step_s": str(spec.step_s),
        "episode_steps": str(spec.episode_steps),
        "n_envs": "1",
        "hyperparameters": '{"n_steps": 128, "batch_size": 64, "n_epochs": 2}',
        "mode": "training",
    }


def wait_done(name: str, *, timeout_s: float, log: Path) -> RLModel:
    def done() -> bool:
        row = RLModel.objects.filter(name=name).first()
        return row is not None and row.status != ModelStatus.TRAINING

    wait_for(done, timeout_s=timeout_s, what=f"run {name} finished", log=log)
    return RLModel.objects.get(name=name)


def test_starting_a_run_without_redis_returns_at_once_and_the_embedded_worker_trains_it(
    served: Served, recorded_markets: list[str], django_user_model
) -> None:
    django_user_model.objects.create_user(
        "operator", password=STAFF_PASSWORD, is_staff=True, is_superuser=True
    )
    session = Session(served.url)
    session.login("operator")
    status, page, _ = session.request("/admin/training/rlmodel/start/")
    assert status == 200 and 'id="worker-warning"' not in page  # the worker answered
    form = {**run_form(recorded_markets, name="embedded", timesteps=512)}
    form["csrfmiddlewaretoken"] = session.csrf(page)
    started = time.monotonic()
    status, body, headers = session.request("/admin/training/rlmodel/start/", form)
    elapsed = time.monotonic() - started
    assert status == 302, body[-3000:]
    model = RLModel.objects.get(name="embedded")
    assert headers["Location"] == f"/admin/training/rlmodel/{model.pk}/run/"
    # Queued, not run: the request came back long before a run could even load torch.
    assert elapsed < 1.0, f"starting a run took {elapsed:.2f} s"
    model = wait_done("embedded", timeout_s=300, log=served.log)
    assert model.status == ModelStatus.READY, model.error
    assert model.artifact_sha256 and model.metrics["evaluation"]["episodes"] == 3
    log_tail = model.progress["log"]
    assert any("started by worker pid" in line for line in log_tail)
    assert log_tail[-1].split(" ", 1)[1].startswith("ready: held-out P&L")
    # It went through Celery's filesystem queue, consumed by the worker `serve` started.
    assert "Connected to filesystem://" in served.log.read_text()
    # (the worker logs the task's success just after the row is marked ready)
    wait_for(
        lambda: re.search(r"Task training\.train_model\[\S+\] succeeded", served.log.read_text()),
        timeout_s=60,
        what="the worker's task success line",
        log=served.log,
    )
    assert (served.var_dir / "celery" / "queue").is_dir()
    # The run page's endpoint reports the end.
    status, state, _ = session.request(f"/admin/training/rlmodel/{model.pk}/run.json")
    assert status == 200 and '"finished": true' in state and '"phase": "ready"' in state


def test_the_run_page_follows_a_run_in_a_browser(
    chromium: Path, served: Served, recorded_markets: list[str], django_user_model
) -> None:
    from playwright.sync_api import expect, sync_playwright

    django_user_model.objects.create_user(
        "operator", password=STAFF_PASSWORD, is_staff=True, is_superuser=True
    )
    form = run_form(recorded_markets, name="watched", timesteps=6144)
    errors: list[str] = []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        engine = playwright.chromium.launch(
            executable_path=str(chromium), args=browser.CHROMIUM_ARGS
        )
        try:
            page = engine.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(f"{served.url}/admin/login/?next=/admin/")
            page.fill("#id_username", "operator")
            page.fill("#id_password", STAFF_PASSWORD)
            page.click("input[type=submit]")
            page.wait_for_url(f"{served.url}/admin/")

            page.goto(f"{served.url}/admin/training/rlmodel/start/")
            expect(page.locator("#worker-warning")).to_have_count(0)
            for field, value in form.items():
                if field in ("algorithm", "mode"):
                    page.select_option(f"#id_{field}", value)
                else:
                    page.fill(f"#id_{field}", value)
            started = time.monotonic()
            page.click("#start-form input[type=submit]")
            page.wait_for_url(re.compile(r"/admin/training/rlmodel/\d+/run/$"))
            assert time.monotonic() - started < 3.0  # the form's post and the run page

            # The page updates itself (no reload) while the worker trains ...
            expect(page.locator("#run-phase")).to_have_text("training", timeout=120_000)
            page.wait_for_function(
                "() => { const p = parseInt(document.getElementById('run-percent')"
                ".textContent); return p > 0 && p < 100; }",
                timeout=120_000,
            )
            expect(page.locator("#run-fps")).to_contain_text("steps/s")
            expect(page.locator("#run-eta")).not_to_have_text("n/a")
            expect(page.locator("#cancel-run")).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "run-page-training.png"), full_page=True)
            # ... to the end, where it stops polling and links to the model's page.
            expect(page.locator("#run-status")).to_have_text(re.compile("^ready"), timeout=300_000)
            expect(page.locator("#run-percent")).to_have_text("100%")
            expect(page.locator("#run-done")).to_be_visible()
            expect(page.locator("#cancel-run")).to_have_count(0)
            expect(page.locator("#run-log")).to_contain_text("ready: held-out P&L")
            polls = int(page.locator("#run-page").get_attribute("data-polls") or 0)
            assert polls >= 2
            curve_src = page.locator("#run-curve").get_attribute("src") or ""
            assert curve_src.startswith("data:image/svg+xml;base64,")
            page.screenshot(path=str(ARTIFACTS / "run-page-ready.png"), full_page=True)
            page.wait_for_timeout(2500)
            assert int(page.locator("#run-page").get_attribute("data-polls") or 0) == polls
        finally:
            engine.close()
    for name in ("run-page-training.png", "run-page-ready.png"):
        assert (ARTIFACTS / name).stat().st_size > 10_000
    assert [e for e in errors if not e.startswith("Failed to load resource")] == []
