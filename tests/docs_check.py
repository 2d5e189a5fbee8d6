#!/usr/bin/env python3
"""`make docs-check`: the demo's /docs in headless chromium, the tour that
tests/test_docs.py asserts, and a screenshot for a person to look at:

    python3 tests/docs_check.py build/docs.png

tour(page, base) is shared with the test: it loads /docs, waits for
Swagger UI to list the operations, opens GET /users/{id}, clicks "Try it
out", types 7, clicks "Execute" and waits for the response to show."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from browser import Browser            # noqa: E402
from harness import Server             # noqa: E402

# The operation of GET /users/{id} in Swagger UI: tag "inputs",
# operationId get_users_id.
USERS_OP = "#operations-inputs-get_users_id"

FOCUS_INPUT = """(() => {
  const input = document.querySelector(%r + ' tr[data-param-name="id"] input');
  if (!input) return false;
  input.focus();
  return document.activeElement === input;
})()""" % USERS_OP


def click(page, selector):
    return page.evaluate("(() => { const e = document.querySelector(%r); "
                         "if (!e) return false; e.click(); return true; })()" % selector)


def tour(page, base):
    """Returns (the operations listed as 'METHOD /path', the response body
    text Swagger UI shows for GET /users/7)."""
    page.navigate(base + "/docs")
    page.wait_for("document.querySelectorAll('.opblock').length > 10", timeout=30)
    ops = page.evaluate("""Array.from(document.querySelectorAll('.opblock-summary')).map(s =>
        (s.querySelector('.opblock-summary-method') || {}).textContent + ' ' +
        (s.querySelector('.opblock-summary-path') || {}).getAttribute('data-path'))""")
    page.wait_for("!!document.querySelector(%r)" % (USERS_OP + " .opblock-summary-control"))
    click(page, USERS_OP + " .opblock-summary-control")
    page.wait_for("!!document.querySelector(%r)" % (USERS_OP + " .try-out__btn"))
    click(page, USERS_OP + " .try-out__btn")
    page.wait_for(FOCUS_INPUT)
    page.call("Input.insertText", {"text": "7"})   # typed, as a person would
    page.wait_for("!!document.querySelector(%r)" % (USERS_OP + " .execute"))
    # Swagger UI takes typed values after a short debounce: click Execute
    # until the answer shows (a click before it only says "Required field").
    shown = """(() => {
        const e = document.querySelector(%r);
        return e && e.textContent.includes('user 7') ? e.textContent : null; })()""" % (
        USERS_OP + " .live-responses-table .response-col_description pre")
    body = None
    for _ in range(10):
        click(page, USERS_OP + " .execute")
        try:
            body = page.wait_for(shown, timeout=2)
            break
        except TimeoutError:
            pass
    if body is None:
        raise AssertionError("Swagger UI showed no answer for GET /users/7: %s" % page.evaluate(
            "document.querySelector(%r).innerText" % USERS_OP)[:2000])
    return ops, body


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "build/docs.png"
    with Server("apps/demo") as srv, Browser() as browser:
        page = browser.page()
        ops, body = tour(page, "http://127.0.0.1:%d" % srv.port)
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(out)
        print("%d operations listed; GET /users/7 answered %s" % (len(ops), body.strip()))
        if page.problems:
            print("problems in the page:\n  " + "\n  ".join(page.problems))
            return 1
        print("screenshot: " + out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
