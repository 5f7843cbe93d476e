"""The run page in a real browser: headless Chromium opens index.html from
disk (no server), the slider and the arrow keys change the shown frame.

Needs Debian's chromium and chromium-driver; .ci/run installs them and sets
CENTERLOSS_REQUIRE_BROWSER=1, so there a missing browser fails instead of skipping.
"""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.conftest import QUICK, REPO, run_cli, wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
if not (CHROMIUM and DRIVER):
    if os.environ.get("CENTERLOSS_REQUIRE_BROWSER"):
        raise RuntimeError("chromium and chromedriver are required here: apt-get install chromium chromium-driver")
    pytest.skip("no chromium/chromedriver (apt-get install chromium chromium-driver)", allow_module_level=True)

pytestmark = pytest.mark.slow
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})  # console and network
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def shown(driver):
    image = driver.find_element(By.ID, "frame")
    loaded = driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", image)
    return driver.find_element(By.ID, "epoch-label").text, image.get_attribute("src").rsplit("/", 1)[-1], loaded


def test_slider_and_arrow_keys_step_through_the_epochs(browser, small_sweep):
    run_dir = small_sweep[0] / "lr=0.01__seed=0"  # a sweep member is an ordinary run folder
    browser.get((run_dir / "index.html").as_uri())
    assert browser.title == "lr=0.01__seed=0"
    assert shown(browser) == ("epoch 2 / 2", "epoch_002.png", True)  # opens on the last epoch, image loaded from disk
    slider = browser.find_element(By.ID, "epoch-slider")
    # Drag the slider's thumb to the far left, as a user would.
    webdriver.ActionChains(browser).click_and_hold(slider).move_by_offset(-slider.size["width"] // 2, 0).release().perform()
    assert shown(browser) == ("epoch 1 / 2", "epoch_001.png", True)
    assert "test acc" in browser.find_element(By.ID, "frame-caption").text
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)
    assert shown(browser)[:2] == ("epoch 2 / 2", "epoch_002.png")
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)  # past the end stays at the end
    assert shown(browser)[:2] == ("epoch 2 / 2", "epoch_002.png")
    browser.find_element(By.ID, "prev").click()
    assert shown(browser)[:2] == ("epoch 1 / 2", "epoch_001.png")
    # The rest of the page: the GIF and the metrics plot load, the config is there.
    for src in ("features.gif", "metrics.png"):
        image = browser.find_element(By.CSS_SELECTOR, f'img[src="{src}"]')
        assert browser.execute_script("return arguments[0].naturalWidth", image) > 0, src
    assert "center_loss_weight" in browser.find_element(By.TAG_NAME, "pre").text
    assert not [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def test_an_open_set_run_page_shows_its_roc_plot(browser, open_run):
    browser.get((open_run[0] / "index.html").as_uri())
    heading = browser.find_element(By.ID, "roc")
    assert heading.text == "Unknowns and verification"
    image = browser.find_element(By.CSS_SELECTOR, 'img[src="roc.png"]')
    browser.execute_script("arguments[0].scrollIntoView()", image)
    assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image) > 600
    assert image.is_displayed() and image.size["width"] > 300
    header = [cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "table tr:first-child th")]
    assert "open_auroc" in header and "verify_eer" in header
    assert not [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def test_sweep_page_steps_through_the_grid(browser, small_sweep):
    browser.get((small_sweep[0] / "index.html").as_uri())
    assert shown(browser) == ("epoch 2 / 2", "epoch_002.png", True)
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_LEFT)
    assert shown(browser) == ("epoch 1 / 2", "epoch_001.png", True)
    browser.find_element(By.LINK_TEXT, "lr=0.01__seed=1").click()
    assert shown(browser)[0] == "epoch 2 / 2" and browser.title == "lr=0.01__seed=1"


def test_live_page_shows_the_epochs_so_far_and_stops_reloading_at_the_end(browser, tmp_path):
    """Open index.html while the run trains: it exists from epoch 1 on, says
    'running', shows the frames so far and reloads itself; after the run it
    shows every epoch and no longer reloads."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *QUICK[:2], "--train-subset", "1500",
                             "--batch-size", "50", "--epochs", "3", "--run-name", "live"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    page = tmp_path / "outputs" / "live" / "index.html"
    try:
        for line in proc.stdout:
            if line.startswith("epoch 1/3 |"):
                break
        deadline = time.time() + 60
        while not page.is_file() and time.time() < deadline:  # the worker writes it after the frame
            time.sleep(0.2)
        browser.get(page.as_uri())
        status = browser.find_element(By.ID, "status").text
        assert status.startswith("running: epoch") and "of 3 finished" in status
        assert browser.find_elements(By.CSS_SELECTOR, 'meta[http-equiv="refresh"]')
        assert shown(browser)[2]  # the latest frame so far is loaded
        assert proc.wait(timeout=300) == 0
    finally:
        proc.kill()
        proc.stdout.close()
    browser.get(page.as_uri())
    assert not browser.find_elements(By.ID, "status")
    assert not browser.find_elements(By.CSS_SELECTOR, 'meta[http-equiv="refresh"]')
    assert shown(browser) == ("epoch 3 / 3", "epoch_003.png", True)


# ---------- the interactive Plotly view ----------

def plotted(driver) -> dict:
    """What the Plotly figure shows now: traces, the slider's epoch and the first class's first points."""
    return driver.execute_script("""
        const g = document.getElementById('features');
        if (!(g && g._fullLayout && g._fullData && g._fullData.length)) return null;
        return {traces: g._fullData.length, active: g._fullLayout.sliders[0].active,
                steps: g._fullLayout.sliders[0].steps.length, points: Array.from(g._fullData[0].x).slice(0, 5),
                type: g._fullData[0].type};""")


def click_slider_at(driver, fraction):
    """A click on the slider's rail, `fraction` of the way along, as a user picks an epoch."""
    rail = driver.find_element(By.CSS_SELECTOR, ".slider-rail-touch-rect")
    width = rail.size["width"]
    webdriver.ActionChains(driver).move_to_element_with_offset(rail, int((fraction - 0.5) * (width - 8)), 0).click().perform()


def requests_made(driver) -> list:
    """Every URL the page asked the network stack for, from Chromium's own log."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


@pytest.fixture(scope="module")
def run_3d(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("interactive3d")
    run_cli("train.py", *QUICK, "--epochs", "2", "--feat-dim", "3", "--run-name", "d3", cwd=cwd, check=0)
    return cwd / "outputs" / "d3"


@pytest.mark.parametrize("which", ["2-D sweep member", "3-D run"])
def test_interactive_view_renders_and_its_slider_changes_the_points(browser, small_sweep, run_3d, which):
    run_dir = small_sweep[0] / "lr=0.01__seed=0" if which == "2-D sweep member" else run_3d
    browser.get_log("performance")  # start the network record with this page
    browser.get((run_dir / "interactive.html").as_uri())
    last = wait_until(lambda: plotted(browser), "the plot to render")
    assert last["traces"] == 11 and last["steps"] == 2 and last["active"] == 1  # ten classes and the centers
    assert last["type"] == ("scatter3d" if which == "3-D run" else "scatter")
    if which == "3-D run":
        assert browser.find_elements(By.CSS_SELECTOR, "#features canvas")  # WebGL scene, turned with the mouse
    else:
        assert len(browser.find_elements(By.CSS_SELECTOR, "#features .scatterlayer .point")) > 100
    click_slider_at(browser, 0.0)  # epoch 1
    first = wait_until(lambda: (p := plotted(browser))["points"] != last["points"] and p, "the points to move")
    assert first["active"] == 0
    click_slider_at(browser, 1.0)  # and back to epoch 2: the same points as at the start
    wait_until(lambda: plotted(browser)["points"] == last["points"], "the points to come back")
    assert not [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    urls = requests_made(browser)
    assert any(url.endswith("plotly.min.js") for url in urls)  # the log really records requests
    assert all(url.startswith(("file://", "data:", "blob:")) for url in urls), urls  # nothing left the machine
