"""interactive.html in a real browser (headless Chromium, opened from disk):
the Plotly view renders in 2-D and 3-D, dragging the epoch slider changes the
points, hovering data is there, nothing is logged as an error, and no request
leaves the machine. Needs Debian's chromium and chromium-driver, as the run
page test does (.ci/run installs them)."""

import json
import os
import shutil

import numpy as np
import pytest

from tests.conftest import QUICK, run_cli

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
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # SwiftShader: WebGL in software, for the 3-D view, on a machine without a GPU.
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000",
                "--use-angle=swiftshader", "--enable-unsafe-swiftshader"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    work = tmp_path_factory.mktemp("interactive")
    for dim in (2, 3):
        run_cli("train.py", *QUICK, "--epochs", "2", "--feat-dim", dim, "--run-name", f"d{dim}", cwd=work, check=0)
    return {dim: work / "outputs" / f"d{dim}" for dim in (2, 3)}


def plotted(driver) -> list:
    """Class 0's points as the page holds them now (x, y[, z])."""
    return driver.execute_script(
        "var t = document.getElementById('features').data[0];"
        "return [Array.from(t.x), Array.from(t.y), t.z ? Array.from(t.z) : null];")


def requested_urls(driver) -> list:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


@pytest.mark.parametrize("dim", [2, 3])
def test_the_interactive_view_renders_and_the_slider_changes_the_points(browser, runs, dim):
    run_dir = runs[dim]
    assert (run_dir / "plotly.min.js").is_file()  # written beside the page, not fetched
    browser.get_log("performance")  # start counting requests from here
    browser.get((run_dir / "interactive.html").as_uri())
    WebDriverWait(browser, 30).until(lambda d: d.execute_script(
        "var g = document.getElementById('features'); return !!(g && g._fullLayout && g.data && g.data.length == 11)"))
    kind = browser.execute_script("return document.getElementById('features').data[0].type")
    assert kind == ("scatter3d" if dim == 3 else "scatter")
    if dim == 3:  # a WebGL canvas really drew the scene
        assert browser.execute_script("return document.querySelectorAll('#features canvas').length") > 0
    last = plotted(browser)
    hover = browser.execute_script("return document.getElementById('features').data[0].hovertemplate")
    assert "distance to its center" in hover and "test image" in hover
    # Drag the slider's grip to its left end, as a user would: epoch 1's points replace epoch 2's.
    grip = browser.find_element(By.CSS_SELECTOR, ".slider-grip-rect")
    rail = browser.find_element(By.CSS_SELECTOR, ".slider-rail-rect")
    webdriver.ActionChains(browser).click_and_hold(grip).move_by_offset(-rail.size["width"], 0).release().perform()
    WebDriverWait(browser, 10).until(lambda d: plotted(d) != last)
    first = plotted(browser)
    assert len(first[0]) == len(last[0])  # the same points, moved: one can follow a point
    assert not np.allclose(np.array(first[0], dtype=float), np.array(last[0], dtype=float))
    label = browser.execute_script("return document.querySelector('.slider-currentvalue').textContent")
    assert label.strip() == "epoch 1"
    assert not [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    outside = [url for url in requested_urls(browser) if not url.startswith(("file://", "data:", "blob:", "about:"))]
    assert not outside, outside
