"""The web console end to end in a real browser: Debian's headless Chromium driven by Playwright against
a real ``iotctl up`` (a child process: broker, bridge, API, analytics, simulated devices). An admin signs
in with the bootstrap key and sees the devices come online; a live chart receives new points; a config
change is reported by the device; a student starts a simulator scenario on their own devices and the
detector's episode appears on the chart; a student cannot open another student's device; the pages
work with the keyboard and on a phone, with no error in the browser's console.

Each page's screenshot is taken here; with ``CONSOLE_SCREENSHOTS=docs/console`` they are written where
the README links them (``CONSOLE_SCREENSHOTS=docs/console scripts/test tests/test_console_browser.py``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from iot_testing import wait_for
from iot_testing.browser import chromium
from iot_testing.up import UpProcess

pytestmark = pytest.mark.integration

PASSWORD = "browser test password"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
T = 60_000  # ms: the longest a page may take to show what it waits for (a loaded shared machine)


@dataclass
class Console:
    url: str
    token: str
    http: httpx.Client
    browser: Any
    shots: Path
    up: UpProcess
    errors: list[str] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)

    def page(self, viewport: dict[str, int] = DESKTOP, *, allow: tuple[str, ...] = ()) -> Any:
        """A new browser context's page; its console errors and uncaught exceptions are collected
        (those containing one of ``allow`` are expected)."""
        context = self.browser.new_context(viewport=viewport)
        page = context.new_page()

        def seen(kind: str, text: str) -> None:
            if not any(a in text for a in allow):
                self.errors.append(f"{kind}: {text} ({page.url})")

        page.on("console", lambda m: m.type in ("error", "warning") and seen(f"console {m.type}", m.text))
        page.on("pageerror", lambda e: seen("pageerror", str(e)))
        page.set_default_timeout(T)
        return page

    def sign_in_with_key(self, page: Any) -> None:
        page.goto(f"{self.url}/console/")
        page.fill("#token", self.token)
        page.press("#token", "Enter")
        page.wait_for_selector("#nav:not([hidden])")

    def sign_in(self, page: Any, username: str) -> None:
        page.goto(f"{self.url}/console/")
        page.fill("#username", username)
        page.fill("#password", PASSWORD)
        page.click("#password-form button")
        page.wait_for_selector("#nav:not([hidden])")

    def shot(self, page: Any, name: str, *, full_page: bool = False) -> None:
        page.screenshot(path=str(self.shots / f"{name}.png"), full_page=full_page)

    def api(self, method: str, path: str, token: str | None = None, **kw: Any) -> Any:
        r = self.http.request(method, path, headers={"Authorization": f"Bearer {token or self.token}"}, **kw)
        assert r.status_code < 300, f"{method} {path}: {r.status_code} {r.text}"
        return r.json() if r.content else None


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    state = tmp_path_factory.mktemp("console") / "state"
    shots = Path(os.environ.get("CONSOLE_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    shots.mkdir(parents=True, exist_ok=True)
    up = UpProcess(state, "--devices", "2", "--interval", "0.25", "--mqtt-port", "0", "--api-port", "0")
    with up:
        # iotctl up prints the console's URL (its banner follows the lock's record: wait for it)
        wait_for(lambda: "console http://" in up.stderr, "the console's URL in the banner", timeout=30)
        url = up.platform.api_url
        token = (state / "admin.token").read_text().strip()
        with httpx.Client(base_url=url, timeout=30) as http, chromium() as browser:
            yield Console(url, token, http, browser, shots, up)


def test_admin_signs_in_with_the_key_and_sees_devices_come_online(console: Console) -> None:
    page = console.page()
    console.sign_in_with_key(page)
    for device in ("up-000", "up-001"):
        page.wait_for_selector(f'tr[data-device="{device}"][data-state="online"]')
    assert "2 devices: 2 online" in page.inner_text("#fleet-summary")
    page.fill("#fleet-search", "up-001")
    assert page.locator("tr[data-device]").count() == 1
    page.fill("#fleet-search", "")
    console.shot(page, "fleet")
    # the phone: the same page, readable (the table scrolls inside its box, the page does not)
    phone = console.page(PHONE)
    console.sign_in_with_key(phone)
    phone.wait_for_selector('tr[data-device="up-000"]')
    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"] + 1
    console.shot(phone, "fleet-phone")
    phone.context.close()
    # enrolling a new device: register it (after a confirmation), get its one-time token and command
    page.click("text=Enroll a new device")
    page.fill("#register-id", "lab-pi")
    page.click("text=Register…")
    page.click("#confirm-ok")
    result = page.wait_for_selector("#register-result .notice-ok").inner_text()
    assert "Registered lab-pi" in result and f"--api {console.url}" in result
    page.context.close()
    assert console.errors == []


def test_an_unreachable_platform_and_an_empty_fleet_say_so(console: Console) -> None:
    page = console.page(allow=("net::ERR_FAILED",))  # the aborted request itself
    console.sign_in_with_key(page)
    page.wait_for_selector('tr[data-device="up-000"]')
    page.route("**/v1/console/fleet", lambda route: route.abort())
    page.reload()
    assert "unreachable" in page.wait_for_selector(".notice-error").inner_text()
    page.unroute("**/v1/console/fleet")
    page.route("**/v1/console/fleet", lambda route: route.fulfill(json={
        "devices": [], "classes": [], "rate_window_s": 60, "rejections_window_s": 3600,
        "store_error": None, "generated_at": "2026-01-01T00:00:00Z",
    }))  # fmt: skip
    page.reload()
    assert "No devices yet" in page.wait_for_selector(".notice-empty").inner_text()
    page.context.close()
    assert console.errors == []


def test_keyboard_alone_opens_a_device_and_its_live_chart_receives_new_points(console: Console) -> None:
    page = console.page()
    console.sign_in_with_key(page)
    page.wait_for_selector('tr[data-device="up-000"]')
    page.focus("#fleet-search")
    for _ in range(30):  # Tab to the first device's link, then Enter
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "up-000":
            break
    else:
        pytest.fail("Tab never reached the device link")
    page.keyboard.press("Enter")
    page.wait_for_selector('.chart[data-field="temperature"]')
    points = "document.querySelector('.chart[data-field=\"temperature\"]').dataset.points"
    until(page, f"Number({points}) > 0")
    before = page.evaluate(f"Number({points})")
    until(page, f"Number({points}) >= {before + 8}")  # 4 readings/s: new points keep coming
    assert page.get_attribute('[data-range="live"]', "aria-pressed") == "true"
    console.shot(page, "device", full_page=True)
    page.click('[data-range="1h"]')  # the history view of the same readings
    until(page, "document.querySelector('#live-status').textContent.includes('readings from')")
    page.context.close()
    assert console.errors == []


def test_a_config_change_is_applied_and_reported_by_the_device(console: Console) -> None:
    page = console.page()
    console.sign_in_with_key(page)
    page.goto(f"{console.url}/console/#/device/up-001")
    page.wait_for_selector("#config-apply")
    page.select_option("#config-key", "heartbeat_interval_s")
    page.fill("#config-value", "7")
    page.click("#config-apply")
    until(page, "document.querySelector('#config-desired')?.textContent === 'version 1'")
    until(
        page,
        "document.querySelector('#config-reported')?.textContent.startsWith('version 1') "
        "&& document.querySelector('#config-reported').textContent.includes('in sync')",
    )
    assert console.api("GET", "/v1/devices/up-001/config")["desired"] == {"heartbeat_interval_s": 7}
    page.context.close()
    assert console.errors == []


def until(page: Any, expression: str, timeout_ms: int = T) -> None:
    """Wait until ``expression`` is true in the page. (Playwright's wait_for_function evaluates it with
    eval inside the page, which the console's Content-Security-Policy rightly refuses.)"""
    deadline = time.monotonic() + timeout_ms / 1000
    while not page.evaluate(f"() => Boolean({expression})"):
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout_ms / 1000:g} s: {expression}")
        page.wait_for_timeout(100)


def _students(console: Console) -> None:
    if console.tokens:
        return
    console.api("POST", "/v1/users", json={"username": "tess", "password": PASSWORD, "is_teacher": True})
    teacher = console.http.post("/v1/auth/login", json={"username": "tess", "password": PASSWORD}).json()
    class_id = console.api("POST", "/v1/classes", teacher["access_token"], json={"name": "7B"})["id"]
    for name in ("ana", "ben"):
        console.api("POST", f"/v1/classes/{class_id}/members", teacher["access_token"],
                    json={"username": name, "password": PASSWORD})  # fmt: skip
        token = console.http.post("/v1/auth/login", json={"username": name, "password": PASSWORD}).json()
        console.tokens[name] = token["access_token"]
        console.api("POST", "/v1/devices/register", token["access_token"], json={"id": f"{name}-sensor"})


def test_a_student_cannot_open_another_students_device(console: Console) -> None:
    _students(console)
    page = console.page(allow=("status of 404", "status of 403"))  # the refused requests themselves
    console.sign_in(page, "ana")
    page.wait_for_selector('tr[data-device="ana-sensor"]')
    assert page.locator("tr[data-device]").count() == 1, "ana sees only her own device"
    page.goto(f"{console.url}/console/#/device/ben-sensor")
    denied = page.wait_for_selector(".notice-denied")
    assert "Not found" in denied.inner_text()
    assert page.locator(".chart").count() == 0
    console.shot(page, "no-permission")
    page.goto(f"{console.url}/console/#/rollouts")
    assert "No permission" in page.wait_for_selector(".notice-denied").inner_text()
    page.context.close()
    assert console.errors == []


def test_a_students_scenario_shows_its_ground_truth_and_the_episode_on_the_chart(console: Console) -> None:
    _students(console)
    page = console.page()
    console.sign_in(page, "ana")
    page.click('#nav a[data-page="simulator"]')
    page.click('button[data-scenario="first_alert"]')
    page.wait_for_url("**/#/simulator/*")
    page.wait_for_selector("text=Run 1: first_alert")
    assert page.locator(".device-links a").count() == 2
    # 12 simulated hours in ~30 s; then the episodes the detector found, each judged against the truth
    until(page, "document.querySelector('#run h1')?.textContent.includes('finished')", 180_000)
    page.wait_for_selector("#alerts tbody tr .badge-ok", timeout=T)  # a true alarm
    assert "value faults found" in page.inner_text("#recall")
    found = page.locator("#labels .badge-ok").count()
    assert found >= 1, page.inner_text("#labels")
    console.shot(page, "simulator", full_page=True)
    # the true alarm's link opens its device around that moment, the episode drawn on its field's chart
    row = page.locator("#alerts tbody tr", has=page.locator(".badge-ok")).first
    field = row.locator("td").nth(1).inner_text()
    row.locator("a").first.click()
    page.wait_for_selector('[data-range="episode"][aria-pressed="true"]')
    selector = f'.chart[data-field="{field}"]' if field != "all fields" else ".chart"
    until(page, f"Number(document.querySelector('{selector}')?.dataset.episodes || 0) >= 1")
    page.wait_for_selector("#episodes tbody tr")
    console.shot(page, "device-episode", full_page=True)
    # others' runs are not theirs to see
    ben = console.http.get("/v1/console/simulations/1", headers={"Authorization": f"Bearer {console.tokens['ben']}"})
    assert ben.status_code == 404
    page.context.close()
    assert console.errors == []


def test_alerts_and_rollouts_pages(console: Console) -> None:
    console.api("POST", "/v1/rollouts", json={
        "name": "heartbeat 20s", "settings": {"heartbeat_interval_s": 20},
        "target": {"devices": ["up-000", "up-001"]}, "canary": "50%", "waves": ["100%"], "wave_wait_s": 1,
    })  # fmt: skip
    page = console.page()
    console.sign_in_with_key(page)
    page.click('#nav a[data-page="alerts"]')
    page.wait_for_selector("#alerts-episodes tbody tr")  # the scenario's episodes, for the admin too
    page.wait_for_selector("#alerts-operational li, #alerts-operational .notice")
    page.locator("#alerts-episodes tbody tr").first.get_by_role("button", name="False alarm").click()
    page.wait_for_selector("#alerts-episodes .ack .badge")
    console.shot(page, "alerts", full_page=True)
    page.click('#nav a[data-page="rollouts"]')
    page.wait_for_selector("article.rollout table tbody tr")
    assert "heartbeat 20s" in page.inner_text("article.rollout h2")
    console.shot(page, "rollouts", full_page=True)
    page.context.close()
    assert console.errors == []


def test_ctrl_c_with_a_live_page_open_stops_cleanly(console: Console) -> None:
    """Last: an open live stream used to hold uvicorn's shutdown until it was cancelled, with a
    traceback in the terminal; now the stream ends when the platform stops."""
    page = console.page()
    console.sign_in_with_key(page)
    page.goto(f"{console.url}/console/#/device/up-000")
    until(page, "Number(document.querySelector('#live-status')?.dataset.received || 0) > 0")
    assert console.up.stop() == 0
    assert "Traceback" not in console.up.stderr and "stopped." in console.up.stderr, console.up.stderr
    page.context.close()
