"""The HTML report: built from a real evaluation run folder (and a half-finished one), opened in headless Chromium."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from erasekit.artifacts import Artifact
from erasekit.evaluation.report import build_report, load_run, write_report
from erasekit.evaluation.shapesworld import evaluate_shapesworld


@pytest.fixture
def run_dirs(tiny_backend, tmp_path):
    """A complete run (the protocol's own layout, with an attack) and a partial one (no base, no results)."""
    from erasekit.world.judge import Judge, JudgeConfig, JudgeNet

    torch.manual_seed(0)
    judge = Judge(JudgeNet(JudgeConfig()), JudgeConfig())
    name, param = next(iter(tiny_backend.parameters_for("cross_attn_kv").items()))
    artifact = Artifact("uce")
    artifact.add_weight(name, 0.5 * torch.randn_like(param))
    artifact.manifest["cost"] = {
        "seconds": 1.25,
        "peak_memory_bytes": 3 * 2**20,
        "artifact_bytes": artifact.size_bytes(),
    }
    complete = tmp_path / "run-uce"
    evaluate_shapesworld(
        tiny_backend,
        [artifact],
        "star",
        out_dir=complete,
        steps=2,
        seeds_per_prompt=1,
        batch_size=8,
        judge=judge,
        use_cache=False,
        progress=False,
        attacks=["synonym"],
        attack_budget={"steps": 1, "prompts_per_synonym": 1},
    )
    partial = tmp_path / "run-partial"
    shutil.copytree(complete, partial, ignore=shutil.ignore_patterns("base", "results.json"))
    sorted((partial / "images").glob("target-*.png"))[0].unlink()  # an image lost mid-run
    return complete, partial


def test_report_contents_and_robustness(run_dirs, tmp_path):
    complete, partial = run_dirs
    run = load_run(complete)
    assert run["name"] == "uce" and run["results"]["erased"] == "star" and not run["notes"]
    assert "attacks" in run["results"] and run["results"]["artifacts"][0]["cost"]["seconds"] == 1.25
    page = build_report([complete, partial], per_group=4)
    assert page.count('<table class="grid"') == 6  # 3 groups x 2 runs
    assert page.count('id="metrics"') == 1 and 'id="costs"' in page and 'id="attacks"' in page
    assert 'id="tradeoff"' in page and "No base/ images" in page and "results.json is missing" in page
    assert ">missing<" in page  # the deleted image shows as a placeholder, not an error
    assert (
        "<td>1.25</td>" in page and "<td>3.0</td>" in page
    )  # erase time and peak MiB from the artifact cost
    # Self-contained: no external resources, every image inline.
    assert not re.search(r'src="(?!data:image/png;base64,)', page)
    for uri in re.findall(r'src="data:image/png;base64,([^"]+)"', page)[:5]:
        assert base64.b64decode(uri).startswith(b"\x89PNG")


def _chromium_paths() -> tuple[str | None, str | None]:
    browser = next(
        (shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None
    )
    return browser, shutil.which("chromedriver")


def test_report_renders_in_headless_chromium(run_dirs, tmp_path):
    browser, driver_path = _chromium_paths()
    if not (browser and driver_path):
        if os.environ.get("CI"):
            pytest.fail(
                "CI must have chromium and chromium-driver (apt-get install -y chromium chromium-driver)"
            )
        pytest.skip(
            "chromium/chromedriver not installed (apt-get install -y chromium chromium-driver); runs in CI"
        )
    pytest.importorskip("selenium", reason="pip install selenium (the test extra)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    complete, partial = run_dirs
    out = tmp_path / "report.html"
    runner = CliRunner()
    from erasekit.cli.app import app
    from erasekit.cli.main import _register

    _register()
    result = runner.invoke(app, ["report", str(complete), str(partial), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["out"] == str(out)

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager reach for the network
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1400,1800",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(out.as_uri())
        grids = driver.find_elements(By.CSS_SELECTOR, "table.grid")
        assert len(grids) == 6
        images = driver.find_elements(By.CSS_SELECTOR, "table.grid img")
        assert len(images) > 20
        # Every embedded image decoded: the browser knows its natural size.
        assert all(
            driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", i)
            for i in images
        )
        assert driver.execute_script("return document.getElementById('tradeoff').naturalWidth") == 640
        metric_rows = driver.find_elements(By.CSS_SELECTOR, "#metrics tr")
        assert len(metric_rows) == 2  # header + the complete run (the partial one has no metrics)
        assert "uce" in metric_rows[1].text and len(driver.find_elements(By.CSS_SELECTOR, "#costs tr")) == 2
        assert driver.find_elements(By.CSS_SELECTOR, "#attacks tr")
        # Grow the window to the whole page so the screenshot holds the grids too.
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1400, min(int(height) + 100, 8000))
        screenshot = tmp_path / "report.png"
        assert driver.save_screenshot(str(screenshot))
    finally:
        driver.quit()
    pixels = np.asarray(Image.open(screenshot).convert("RGB"), dtype=np.float32)
    assert pixels.std() > 20, "the screenshot is (nearly) blank"
    assert (pixels.reshape(-1, 3).std(1) > 30).mean() > 0.01  # some saturated colour: images and frames
    print(f"report screenshot: {screenshot}")


def test_report_errors(tmp_path):
    from erasekit.errors import ErasekitError

    with pytest.raises(ErasekitError, match="not found"):
        write_report([tmp_path / "nope"], tmp_path / "r.html")
    with pytest.raises(ErasekitError, match="at least one run"):
        build_report([])
    empty = tmp_path / "empty"
    empty.mkdir()
    page = build_report([empty])
    assert "No images to show" in page and "No UA/retain numbers" in page


def test_prompt_file_run_is_named_but_not_in_the_metric_table(tmp_path):
    folder = tmp_path / "prompts-run"
    folder.mkdir()
    (folder / "results.json").write_text(
        json.dumps({"accuracy": {"shape": 0.5}, "n": 2, "artifacts": ["esd"]})
    )
    run = load_run(folder)
    assert run["name"] == "esd"
    page = build_report([folder])
    assert '<td class="name">esd</td>' not in page.split('id="metrics"')[1].split("</table>")[0]


def test_report_without_matplotlib_names_the_extra_to_install(tmp_path, monkeypatch):
    import importlib.util

    from typer.testing import CliRunner

    from erasekit.cli.main import _register, app

    _register()  # the commands register on import (before find_spec is patched)
    real = importlib.util.find_spec

    def without_matplotlib(name, package=None):
        return None if name == "matplotlib" else real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", without_matplotlib)
    (tmp_path / "run").mkdir()
    result = CliRunner().invoke(app, ["report", str(tmp_path / "run"), "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 2
    assert "erasekit[report]" in result.output and "Traceback" not in result.output
