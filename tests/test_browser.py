"""The Dagster UI as a person uses it, in headless Chromium (Debian's, driven by Playwright):
`retro-ops ui` on a free loopback port over a tiny real home; the asset graph shows the
pipeline's groups and assets; a corpus is materialized by clicking Materialize on its asset
page; the run succeeds and its metadata shows on the page. Screenshots are kept as artifacts
(under $RETRO_OPS_TEST_ARTIFACTS, else the test's tmp folder) and listed in the output."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest
from docs_helpers import REPO, SCREENSHOTS
from helpers import free_port, graphql, start_ui, wait_for_asset_graph

from assets.instance import dagster_instance, ensure_corpus_partition
from retro_ops.catalog import Catalog
from retro_ops.default_corpora import CORPORA_DIR
from retro_ops.settings import Settings

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS_ENV = "RETRO_OPS_TEST_ARTIFACTS"
DOCS_ENV = "RETRO_OPS_DOCS_SCREENSHOTS"  # a folder (relative to the repository) for the tutorial's copies
GRAPH, EXPANDED, LAUNCH, METADATA = SCREENSHOTS
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
GROUPS = ["corpora", "features", "governance", "retrieval", "models", "evaluation"]
RUNS = "{ runsOrError { ... on Runs { results { runId status } } } }"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="needs Debian's chromium at /usr/bin/chromium "
                                       "(apt-get install chromium chromium-driver; .ci/run does)")


def _artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ[ARTIFACTS_ENV]) / "browser" if os.environ.get(ARTIFACTS_ENV) else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _dismiss_first_visit_dialog(page) -> None:
    """The "Join the Dagster community" dialog a fresh profile gets (once per instance)."""
    skip = page.get_by_role("button", name="Skip")
    try:
        skip.wait_for(timeout=5_000)
    except Exception:  # playwright's TimeoutError: this instance showed it before
        return
    skip.click()


def _wait_for_run(port: int, timeout: float = 90.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = graphql(port, RUNS)["data"]["runsOrError"]["results"]
        if runs and runs[0]["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
            return runs[0]
        time.sleep(1)
    raise AssertionError(f"no run finished within {timeout:.0f} s: {runs}")


def test_materialize_a_corpus_by_clicking(home: Settings, tmp_path: Path, capsys):
    from playwright.sync_api import sync_playwright

    corpus = tmp_path / "tiny"
    corpus.mkdir()
    shutil.copy(CORPORA_DIR / "moby_dick" / "chapter_97.txt", corpus)
    catalog = Catalog.open(home.catalog_url, home=home.home)
    catalog.add_corpus("tiny", str(corpus))
    ensure_corpus_partition(dagster_instance(home), "tiny")
    shots, port, log = _artifacts(tmp_path), free_port(), tmp_path / "ui.log"
    base = f"http://127.0.0.1:{port}"
    process = start_ui(port, log)
    try:
        wait_for_asset_graph(process, port, log)
        with sync_playwright() as p:
            browser = p.chromium.launch_persistent_context(
                tempfile.mkdtemp(dir=tmp_path), executable_path=str(CHROMIUM), headless=True,
                args=CHROMIUM_ARGS, viewport={"width": 1500, "height": 950})
            page = browser.new_page()
            page.set_default_timeout(60_000)

            # the asset graph: one node per stage, each listing its assets
            page.goto(f"{base}/asset-groups")
            _dismiss_first_visit_dialog(page)
            for group in GROUPS:
                page.get_by_text(group, exact=True).first.wait_for()
            page.screenshot(path=shots / GRAPH)
            for group in GROUPS:  # expand each group of the graph's sidebar tree
                page.get_by_text(group, exact=True).first.dblclick()
            for asset in ("corpus_files", "documents", "chunks", "chunk_embeddings", "chunk_scores",
                          "exclusions", "retrieval_set", "faiss_index", "retro_checkpoint", "evaluation"):
                page.get_by_text(asset, exact=True).first.wait_for()
            page.screenshot(path=shots / EXPANDED)

            # asset page -> Materialize -> all (one) partitions -> Launch 1 run
            page.goto(f"{base}/assets/documents")
            _dismiss_first_visit_dialog(page)
            page.get_by_role("button", name="Materialize…").click()
            dialog = page.get_by_role("dialog")
            dialog.get_by_role("button", name="All", exact=True).click()
            dialog.get_by_text("1 partition").wait_for()
            page.screenshot(path=shots / LAUNCH)
            dialog.get_by_role("button", name="Launch 1 run").click()
            run = _wait_for_run(port)
            assert run["status"] == "SUCCESS", f"run {run['runId']} {run['status']}; see {log}"

            # the materialization's metadata, as the asset's events page shows it
            page.goto(f"{base}/assets/documents?view=events")
            digest = catalog.latest_corpus_version("tiny").digest
            page.get_by_text(digest).wait_for()
            for name in ("dagster/row_count", "corpus_digest", "lancedb_version"):
                assert page.get_by_text(name, exact=True).count(), name
            page.screenshot(path=shots / METADATA, full_page=True)
            browser.close()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    with capsys.disabled():
        print(f"\nscreenshots in {shots}: {', '.join(sorted(p.name for p in shots.glob('*.png')))}")
    assert sorted(p.name for p in shots.glob("*.png")) == sorted(SCREENSHOTS)
    if os.environ.get(DOCS_ENV):
        _copy_for_the_docs(shots, REPO / os.environ[DOCS_ENV])


def _copy_for_the_docs(shots: Path, folder: Path, width: int = 1200) -> None:
    """Each screenshot scaled to `width` and reduced to a 256-colour palette: small enough to
    commit (tests/test_docs.py holds them under 300 kB), sharp enough to read."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name in SCREENSHOTS:
        with Image.open(shots / name) as image:
            image = image.convert("RGB")
            image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
            image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(folder / name, optimize=True)
