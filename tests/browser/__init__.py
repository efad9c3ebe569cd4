"""Browser tests: headless Chromium driven by Playwright (``lab/browser_driver.py``)."""
