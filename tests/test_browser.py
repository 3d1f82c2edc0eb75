"""A real browser (Debian's headless Chromium via Selenium) drives the Generate tab."""

from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.browser]

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "artifacts" / "screenshots" / "generate.png"  # named in the README
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def driver():
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("the browser test needs Debian's chromium and chromium-driver: "
                    "sudo apt-get install -y chromium chromium-driver (make test does this)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1800"):
        opts.add_argument(flag)
    d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield d
    d.quit()


def test_generate_in_a_real_browser(driver, app_url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 120)
    driver.get(app_url)
    wait.until(EC.element_to_be_clickable((By.ID, "generate-button")))
    # class: type into the dropdown and pick the option
    dropdown = next(e for e in driver.find_elements(By.CSS_SELECTOR, "input[aria-label='class']") if e.is_displayed())
    dropdown.click()
    dropdown.send_keys(Keys.CONTROL, "a")
    dropdown.send_keys("Trouser", Keys.ENTER)
    # difficulty: the slider's number box
    s_box = driver.find_element(By.CSS_SELECTOR, "input[type='number'][aria-label*='difficulty s']")
    s_box.send_keys(Keys.CONTROL, "a")
    s_box.send_keys("0.8", Keys.TAB)
    n_box = driver.find_element(By.CSS_SELECTOR, "input[type='number'][aria-label*='number of images']")
    n_box.send_keys(Keys.CONTROL, "a")
    n_box.send_keys("4", Keys.TAB)
    driver.find_element(By.ID, "generate-button").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#generate-gallery img")) >= 4)
    html = driver.find_element(By.ID, "generate-gallery").get_attribute("innerText")
    assert html.count("requested s=0.80") == 4, html
    assert html.count("measured s=") == 4
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SCREENSHOT))
    assert SCREENSHOT.stat().st_size > 10_000
