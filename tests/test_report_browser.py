"""The report opened in headless Chromium: every image decodes, the filters hide exactly the other rows.

The dry run's curated folder (``curated_dir`` in conftest.py) is rendered where that fixture exists; the
curated-like folder of test_report.py otherwise. Screenshots land in pytest's tmp dir (path printed).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from datajuicer_ray.io.curated import CuratedTable
from datajuicer_ray.report import inspect
from tests.support import browser

pytestmark = pytest.mark.browser

BROWSER = browser.find_browser()
needs_browser = pytest.mark.skipif(
    BROWSER is None,
    reason="no chromium binary on PATH (Debian: apt-get install -y chromium; .ci/run installs it)",
)


@pytest.fixture(scope="module")
def curated(request, tmp_path_factory) -> Path:
    try:
        # The real dry run once conftest.py provides it; a failing dry run fails this test, it is not skipped.
        return Path(request.getfixturevalue("curated_dir"))
    except pytest.FixtureLookupError:
        from tests.test_report import write_curated_like

        return write_curated_like(tmp_path_factory.mktemp("curated"))


@needs_browser
def test_report_in_chromium(curated, tmp_path):
    html_path = tmp_path / "report.html"
    html_path.write_text(
        inspect.build_report(CuratedTable(str(curated)), sample=48, seed=0), encoding="utf-8"
    )

    result = browser.self_test(html_path, BROWSER)

    assert result["cards"] > 0
    assert result["images"] >= 6 and result["broken"] == [], result["broken"]  # 6 plots + the pictures
    by_filter = {f["filter"] for f in result["filters"]}
    assert "status" in by_filter and "rewritten" in by_filter
    for f in result["filters"]:
        assert f["wrong"] == 0 and f["missing"] == 0, f  # shows exactly the rows that match
        assert f["counter"] == f"{f['visible']} of {result['cards']} rows shown"
    assert any(0 < f["visible"] < result["cards"] for f in result["filters"]), "no filter hid any row"
    assert result["visible_after_reset"] == result["cards"]

    png = browser.screenshot(html_path, tmp_path / "report.png", BROWSER)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"screenshot: {png}")
