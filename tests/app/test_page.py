"""The web page at /, driven in headless Chromium (Debian's package) through Playwright."""

import os
import shutil

import pytest

from tests.app.test_retrain import dataset_zip
from tests.conftest import shape_jpeg
from tests.live import live_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
if CHROMIUM is None:
    pytest.skip("no chromium on this machine (the README's test command installs Debian's package as root)",
                allow_module_level=True)
TOKEN = "page-token"


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("page")
    shutil.copytree(tiny_model.registry, root / "registry")
    env = {"RESCAM_ADMIN_TOKEN": TOKEN, "RESCAM_DATA_ROOT": str(root / "data")}
    with live_server(root / "registry", env=env) as url:
        yield url, root


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


def natural_width(page) -> int:
    return page.eval_on_selector("#overlay", "img => img.complete ? img.naturalWidth : 0")


def test_upload_see_labels_overlay_and_switch_label(server, browser, tmp_path, tiny_model):
    url, _ = server
    (tmp_path / "shape.jpg").write_bytes(shape_jpeg(index=1))
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(url)
    page.wait_for_function("document.querySelector('#model-info').textContent.includes('v1')")
    assert not page.is_visible("#overlay")  # no empty viewer before the first answer
    page.set_input_files("#file", str(tmp_path / "shape.jpg"))
    page.wait_for_selector("#labels li")
    assert page.locator("#labels li").count() == 5 and page.is_visible("#overlay")
    page.wait_for_function("(() => { const i = document.querySelector('#overlay'); return i.complete && i.naturalWidth > 0 })()")
    first_src = page.get_attribute("#overlay", "src")
    second = page.locator("#labels li").nth(1)
    second.click()
    page.wait_for_function(f"document.querySelector('#overlay').src !== {first_src!r} && "
                           "document.querySelector('#overlay').complete && document.querySelector('#overlay').naturalWidth > 0")
    assert "selected" in second.get_attribute("class")
    assert natural_width(page) > 0
    assert "answered by default v1" in page.text_content("#answered")
    # which rule drew the box (the card's calibrated one), and why
    assert f"boxes: {tiny_model.card['cam']['rule']}" in page.text_content("#answered")
    # the open-world verdict, in words, and the answer in the log
    verdict = page.text_content("#verdict")
    assert "OOD score" in verdict and "knn" in verdict
    assert ("Not one of this model's classes" in verdict) == ("unknown" in page.get_attribute("#verdict", "class"))
    assert page.locator("#answer-log tbody tr").count() == 1
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    assert (tmp_path / "page.png").stat().st_size > 10_000
    if os.environ.get("RESCAM_SCREENSHOT"):  # to look at the page the test drove (the tiny model)
        page.screenshot(path=os.environ["RESCAM_SCREENSHOT"], full_page=False)


def test_the_answer_log_filters_images_that_are_none_of_the_models_classes(server, browser, tmp_path):
    """The shipped model serves: a photograph is called unknown, a new shape is not; the log's filter
    keeps the photograph only."""

    import skimage.data
    from PIL import Image

    from app.registry import Registry
    from training.cli import shipped_model_dir

    root = tmp_path / "shipped"
    reg = Registry(root / "registry")
    reg.deploy("default", reg.register("default", shipped_model_dir()))
    Image.fromarray(skimage.data.chelsea()).save(tmp_path / "cat.png")
    (tmp_path / "star.jpg").write_bytes(shape_jpeg(index=3, size=96))
    with live_server(root / "registry", env={"RESCAM_DATA_ROOT": str(root / "data")}) as url:
        page = browser.new_page(viewport={"width": 1200, "height": 1400})
        page.goto(url)
        page.set_input_files("#file", [str(tmp_path / "cat.png"), str(tmp_path / "star.jpg")])
        page.wait_for_selector("#verdict:not([hidden])")
        assert "Not one of this model's classes" in page.text_content("#verdict")  # the cat, shown first
        # its scores are the class it would be if it were one: greyed, and the screen reader told so
        assert "guesses" in page.get_attribute("#labels", "class")
        assert "if the image were one of the model's classes" in page.get_attribute("#labels button", "aria-label")
        page.locator("#images button").nth(1).click()  # the synthetic shape: known, its scores as they are
        page.wait_for_selector("#verdict.known")
        assert "guesses" not in (page.get_attribute("#labels", "class") or "")
        rows = page.locator("#answer-log tbody tr")
        assert rows.count() == 2
        page.check("#log-unknown")
        assert rows.count() == 1 and "cat.png" in rows.first.text_content()
        if os.environ.get("RESCAM_SCREENSHOT_OPEN_WORLD"):
            page.screenshot(path=os.environ["RESCAM_SCREENSHOT_OPEN_WORLD"], full_page=True)


def test_a_rejected_file_gets_a_clear_message(server, browser, tmp_path):
    url, _ = server
    (tmp_path / "notes.txt").write_text("not an image")
    page = browser.new_page()
    page.goto(url)
    page.set_input_files("#file", str(tmp_path / "notes.txt"))
    page.wait_for_selector("#error:not([hidden])")
    assert "Rejected" in page.text_content("#error") and "image" in page.text_content("#error")


def test_admin_retrain_from_a_zip_ends_in_a_new_version(server, browser, tmp_path):
    url, _ = server
    (tmp_path / "shapes.zip").write_bytes(dataset_zip(per_class=12))
    page = browser.new_page(viewport={"width": 1200, "height": 1400})
    page.goto(url)
    page.fill("#token", "wrong")
    page.click("#token-form button")
    page.wait_for_selector("#admin-error:not([hidden])")
    assert "wrong admin token" in page.text_content("#admin-error")
    page.fill("#token", TOKEN)
    page.click("#token-form button")
    page.wait_for_selector("#versions tbody tr")
    assert "v1 (live)" in page.text_content("#versions")
    page.click("#versions tbody tr >> text=Card")
    page.wait_for_selector("#card:not([hidden])")
    assert '"architecture": "resnet8"' in page.text_content("#card") and '"labels"' in page.text_content("#card")
    page.set_input_files("#zip", str(tmp_path / "shapes.zip"))
    page.fill("#zip-name", "shapes")
    page.fill("#arch", "resnet8")
    page.fill("#epochs", "2")
    page.click("#job-form button")
    page.wait_for_function("document.querySelector('#job-result').textContent.includes('gate')", timeout=120_000)
    result = page.text_content("#job-result")  # its labels are no model's: the first version of a new model
    assert result.startswith("v1"), result
    page.wait_for_function("document.querySelector('#jobs').textContent.includes('shapes')")  # names the model
    plan = page.text_content("#job-plan")  # what the plan chose, as the job's progress recorded it
    assert plan.startswith("plan: resnet8 16/32/64 at ") and "steps (set by " in plan and " cpu " in plan
    assert "stretched" not in plan  # its epochs were named: the budget is as set
    stretched = page.evaluate("planText({architecture: 'resnet20 16/32/64', image_size: 96, steps: 2880, "
                              "limited_by: 'epochs', augment: 'shift-scale', expected_s: 950, "
                              "stretched_budget_s: 950})")  # what a real-photo job's plan says
    assert "2880 steps (set by epochs) (the time budget stretched to 16 min for them)" in stretched, stretched
    if "deployed" in result and "not deployed" not in result:  # the picker offers the new model beside the default
        page.wait_for_function("[...document.querySelectorAll('#model-pick option')].some(o => o.value === 'shapes')")
        page.select_option("#model-pick", "shapes")
        page.wait_for_function("document.querySelector('#versions-title').textContent.includes('shapes')")
        assert "v1 (live)" in page.text_content("#versions")


PREDICT_TOKEN = "predict-token"


@pytest.fixture(scope="module")
def guarded(two_versions, tmp_path_factory):
    """A service that wants a token for predictions too, with two versions that have reports."""
    root = tmp_path_factory.mktemp("guarded")
    shutil.copytree(two_versions / "registry", root / "registry")
    env = {"RESCAM_ADMIN_TOKEN": TOKEN, "RESCAM_PREDICT_TOKEN": PREDICT_TOKEN, "RESCAM_DATA_ROOT": str(root / "data")}
    with live_server(root / "registry", env=env) as url:
        yield url


def signed_in(browser, url, viewport=(1200, 1400)):
    page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
    page.goto(url)
    page.fill("#token", TOKEN)
    page.fill("#predict-token", PREDICT_TOKEN)
    page.click("#token-form button")
    page.wait_for_selector("#versions tbody tr")
    return page


def test_with_a_prediction_token_the_overlay_still_shows(guarded, browser, tmp_path):
    (tmp_path / "shape.jpg").write_bytes(shape_jpeg(index=2))
    page = signed_in(browser, guarded)
    page.set_input_files("#file", str(tmp_path / "shape.jpg"))
    page.wait_for_function("(() => { const i = document.querySelector('#overlay'); return i.complete && i.naturalWidth > 0 })()")
    assert page.get_attribute("#overlay", "src").startswith("blob:")  # fetched with the token, shown as a blob
    assert page.is_visible(".legend .ramp")


def test_the_page_works_from_the_keyboard(guarded, browser, tmp_path):
    (tmp_path / "shape.jpg").write_bytes(shape_jpeg(index=4))
    page = signed_in(browser, guarded)
    page.reload()  # the tokens stay for the tab; the keyboard starts at the top of the page
    page.wait_for_selector("#versions tbody tr")
    page.keyboard.press("Tab")  # the first stop: the file picker
    assert page.evaluate("document.activeElement.id") == "file"
    outline = page.eval_on_selector("#drop", "d => getComputedStyle(d).outlineStyle")
    assert outline != "none"  # focus is visible
    page.set_input_files("#file", str(tmp_path / "shape.jpg"))
    page.wait_for_selector("#labels li")
    page.focus("#labels li:nth-child(1) button")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.closest('li') === document.querySelector('#labels li:nth-child(2)')")
    page.keyboard.press("Enter")
    page.wait_for_selector("#labels li:nth-child(2).selected")
    assert page.get_attribute("#labels li:nth-child(2) button", "aria-pressed") == "true"


def test_a_report_and_two_versions_side_by_side(guarded, browser):
    page = signed_in(browser, guarded)
    row = page.locator("#versions tbody tr", has_text="v2")
    with page.expect_popup() as popup:
        row.locator("text=Report").click()
    report = popup.value
    report.wait_for_load_state()
    assert report.url.startswith("blob:") and "Confusion" in report.content()
    row.locator("text=Compare with v1").click()
    page.wait_for_selector("#compare-images tbody tr img")
    assert "v1 (live) and v2, side by side" in page.text_content("#compare-title")
    assert "top-1" in page.text_content("#compare-a") and "top-1" in page.text_content("#compare-b")
    first = page.locator("#compare-images tbody tr").first
    assert first.locator("img").count() == 2  # both models' boxes on the same image
    page.wait_for_function("[...document.querySelectorAll('#compare img.figure')].every(i => i.complete && i.naturalWidth > 0)")
    assert page.locator("#compare img.figure").count() == 6  # curves, confusion, localization of each
    assert page.is_visible("#compare-actions >> text=Deploy v2")


@pytest.fixture(scope="module")
def trial_server(two_versions, tmp_path_factory):
    """v1 live and v2 registered, for a shadow trial from the page (which promotes v2)."""
    root = tmp_path_factory.mktemp("trial")
    shutil.copytree(two_versions / "registry", root / "registry")
    env = {"RESCAM_ADMIN_TOKEN": TOKEN, "RESCAM_DATA_ROOT": str(root / "data")}
    with live_server(root / "registry", env=env) as url:
        yield url


def test_a_shadow_trial_on_live_traffic_shows_its_figures_and_promotes_from_the_page(trial_server, browser):
    import json
    import time
    import urllib.request

    page = signed_in(browser, trial_server)
    page.fill("#trial-share", "1")
    page.fill("#trial-samples", "6")
    page.locator("#versions tbody tr", has_text="v2").locator("text=Shadow").click()
    page.wait_for_selector("#trials tbody tr >> text=running")
    def tried() -> int:
        ask = urllib.request.Request(f"{trial_server}/v1/models/default/trials",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(ask, timeout=30) as r:
            return json.loads(r.read())["trials"][0]["figures"]["images"]

    for i in range(6):  # live traffic from another client; the page watches the trial fill
        deadline = time.monotonic() + 30
        while tried() < i:  # one at a time, so that none is skipped for the candidate being busy
            assert time.monotonic() < deadline, f"the candidate tried {tried()} of {i} images"
            time.sleep(0.05)
        request = urllib.request.Request(f"{trial_server}/v1/predict", data=shape_jpeg(index=i),
                                         headers={"Content-Type": "image/jpeg"})
        with urllib.request.urlopen(request, timeout=30) as r:
            assert r.status == 200
    page.wait_for_selector("#trials tbody tr >> text=complete", timeout=30_000)
    row = page.locator("#trials tbody tr").first
    assert "6 / 6" in row.text_content() and "100.0%" in row.text_content()  # the same weights agree
    row.locator("text=Promote v2").click()
    page.wait_for_selector("#versions tbody tr >> text=v2 (live)")
    page.wait_for_selector("#trials tbody tr >> text=promoted")
