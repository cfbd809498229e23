"""End to end in a real headless Chromium: an operator logs in and reads a call's conversation.

The admin runs as in production (gunicorn, DEBUG off, static files collected and served by
WhiteNoise) against a PostgreSQL database built by the revisions and filled by the real sample
generator and backfill. Screenshots go to ``var/screenshots/``.
"""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa

from calls import backfill
from calls.sample_data import generate_sample_data
from schema_engine import database
from tests.conftest import ROOT, django_url, run_sql

SCREENSHOTS = ROOT / "var" / "screenshots"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")

OPERATOR, PASSWORD = "operator", secrets.token_urlsafe(16)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def production_server(pg_head_db: sa.URL, tmp_path: Path) -> Iterator[tuple[str, int]]:
    """Serve the admin with gunicorn and production settings over plain HTTP on localhost; yield (url, call id)."""
    with database.connect(pg_head_db) as conn:
        generate_sample_data(connection=conn, calls=30, seed=11)
    backfill.backfill_context(url=pg_head_db)
    call_id = run_sql(pg_head_db, "SELECT call_id FROM conversation_history GROUP BY call_id "
                                  "ORDER BY count(*) DESC, call_id LIMIT 1")[0][0]
    port = free_port()
    env = {
        "PATH": os.environ["PATH"], "ENV_FILE": "/dev/null", "DEBUG": "false",
        "SECRET_KEY": secrets.token_urlsafe(50), "DATABASE_URL": django_url(pg_head_db),
        "ALLOWED_HOSTS": "127.0.0.1", "STATIC_ROOT": str(tmp_path / "static"),
        # No TLS on a localhost test server: the only production settings turned off.
        "SECURE_SSL_REDIRECT": "false", "SESSION_COOKIE_SECURE": "false", "CSRF_COOKIE_SECURE": "false",
        "DJANGO_SUPERUSER_PASSWORD": PASSWORD,
    }
    python = sys.executable
    for args in (["collectstatic", "--noinput"],
                 ["createsuperuser", "--noinput", "--username", OPERATOR, "--email", "ops@example.com"]):
        subprocess.run([python, "manage.py", *args], cwd=ROOT, env=env, check=True, capture_output=True)
    server = subprocess.Popen([str(Path(python).with_name("gunicorn")), "reautomation.wsgi",
                               "--bind", f"127.0.0.1:{port}", "--workers", "2", "--log-level", "warning"],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                assert time.monotonic() < deadline, "gunicorn did not start"
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", call_id
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_operator_logs_in_and_reads_a_calls_conversation(production_server: tuple[str, int]) -> None:
    from playwright.sync_api import expect, sync_playwright

    base, call_id = production_server
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    static_responses: list[tuple[str, int]] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("response", lambda r: static_responses.append((r.url, r.status)) if "/static/" in r.url else None)

            page.goto(f"{base}/admin/calls/call/")
            expect(page).to_have_url(f"{base}/admin/login/?next=/admin/calls/call/")  # anonymous: to the login page
            page.fill("#id_username", OPERATOR)
            page.fill("#id_password", PASSWORD)
            page.click("input[type=submit]")
            expect(page.locator("#result_list")).to_be_visible()

            # The busiest call is on the first page (30 calls, 50 a page): open it from the list.
            page.click(f'#result_list a[href="/admin/calls/call/{call_id}/change/"]')
            conversation = page.locator("#messages-group")
            expect(conversation).to_be_visible()
            rows = conversation.locator("tbody tr.has_original, tbody tr.form-row")
            assert rows.count() > 5
            turns = [int(t) for t in conversation.locator("td.field-turn_index p").all_inner_texts()
                     if t.strip().isdigit()]
            assert turns == sorted(turns) and turns[0] == 0
            tokens = conversation.locator("td.field-token_count p").all_inner_texts()
            assert tokens and all(t.strip().isdigit() for t in tokens)  # every message backfilled
            expect(conversation.locator("td.field-role p").first).to_have_text("System")
            conversation.evaluate("group => group.scrollIntoView()")  # the conversation from its first turn
            page.screenshot(path=str(SCREENSHOTS / "call-conversation.png"))

            page.goto(f"{base}/admin/metrics/?window=30d")
            expect(page.locator("figure.metric-chart svg polyline").first).to_be_attached()
            page.screenshot(path=str(SCREENSHOTS / "metrics.png"), full_page=True)

            page.goto(f"{base}/admin/operations/")
            expect(page.locator("#schema-state")).to_contain_text("up to date")
        finally:
            browser.close()

    assert (SCREENSHOTS / "call-conversation.png").stat().st_size > 10_000
    # The admin's CSS and JS came from WhiteNoise, under hashed names, with DEBUG off.
    assert static_responses and all(status == 200 for _, status in static_responses), static_responses
    assert any(url.endswith(".css") and url.count(".") >= 3 for url, _ in static_responses)
