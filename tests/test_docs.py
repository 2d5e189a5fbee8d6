"""/openapi.json, /docs and /redoc (issue 12): the demo's OpenAPI document is valid
against the OpenAPI 3.1 JSON Schema (the one the npm package
@seriousme/openapi-schema-validator ships, fetched and checked by the
Makefile into build/openapi/schema-3.1.json) with a real validator
(python3-jsonschema, Draft 2020-12), each of its Schema Objects is a valid
2020-12 schema; /docs works in a real headless chromium (tests/browser.py):
no console errors, the demo's operations listed, "Try it out" on
GET /users/{id} shows the answer; /redoc lists every operation of the
document, with only the logo its bundle asks of cdn.redoc.ly refused (the
page's Content-Security-Policy); --no-docs turns them off."""
import json
import os
import unittest

from harness import ROOT, Server, get

SCHEMA = os.environ.get("LUASERVE_OAS_SCHEMA",
                        os.path.join(ROOT, "build", "openapi", "schema-3.1.json"))


def schema_objects(doc):
    """Every Schema Object of an OpenAPI document (components, parameters,
    request bodies, responses)."""
    out = list(doc.get("components", {}).get("schemas", {}).values())
    for item in doc["paths"].values():
        for op in item.values():
            for p in op.get("parameters", []):
                out.append(p["schema"])
            for holder in [op.get("requestBody", {})] + list(op["responses"].values()):
                for media in holder.get("content", {}).values():
                    out.append(media["schema"])
    return out


class OpenAPIDocument(unittest.TestCase):
    SERVER = ("apps/demo",)

    @classmethod
    def setUpClass(cls):
        cls.srv = Server(*cls.SERVER)

    @classmethod
    def tearDownClass(cls):
        status, _ = cls.srv.stop()
        assert status == 0, status

    def doc(self):
        status, headers, body = get(self.srv.port, "/openapi.json")
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("application/json"))
        return json.loads(body)

    def test_valid_against_the_openapi_31_schema(self):
        import jsonschema
        self.assertTrue(os.path.exists(SCHEMA), "%s is missing: `make test` fetches it" % SCHEMA)
        with open(SCHEMA) as f:
            oas = json.load(f)
        self.assertTrue(oas["$id"].startswith("https://spec.openapis.org/oas/3.1/schema/"))
        doc = self.doc()
        errors = sorted(jsonschema.Draft202012Validator(oas).iter_errors(doc), key=str)
        self.assertEqual([], ["%s at %s" % (e.message, list(e.path)) for e in errors])
        objects = schema_objects(doc)
        self.assertGreater(len(objects), 20)
        for s in objects:
            jsonschema.Draft202012Validator.check_schema(s)

    def test_the_validator_catches_a_broken_document(self):
        # the check above can fail: the same validator refuses the demo's
        # document with one thing 3.1 requires taken out (each alone)
        import jsonschema
        with open(SCHEMA) as f:
            oas = json.load(f)
        validator = jsonschema.Draft202012Validator(oas)
        self.assertEqual(list(validator.iter_errors(self.doc())), [])
        doc = self.doc()
        del doc["info"]
        self.assertGreaterEqual(len(list(validator.iter_errors(doc))), 1)
        doc = self.doc()
        doc["paths"]["/users/{id}"]["get"]["parameters"][0].pop("in")
        self.assertGreaterEqual(len(list(validator.iter_errors(doc))), 1)

    def test_the_demo_is_described(self):
        doc = self.doc()
        self.assertEqual(doc["openapi"], "3.1.0")
        self.assertEqual(doc["info"]["title"], "luaserve demo")
        op = doc["paths"]["/items"]["post"]
        self.assertEqual(op["requestBody"]["content"]["application/json"]["schema"],
                         {"$ref": "#/components/schemas/Item"})
        item = doc["components"]["schemas"]["Item"]
        self.assertEqual(item["required"], ["name", "price"])
        self.assertEqual(item["properties"]["price"]["exclusiveMinimum"], 0)
        self.assertEqual(item["properties"]["tags"]["uniqueItems"], True)
        self.assertIn("422", op["responses"])
        self.assertIn("201", op["responses"])
        # every route has a summary and tags; WebSockets and docs are left out
        for path, item in doc["paths"].items():
            for method, op in item.items():
                self.assertTrue(op.get("summary"), "%s %s" % (method, path))
                self.assertTrue(op.get("tags"), "%s %s" % (method, path))
        for hidden in ("/ws/echo", "/ws/chat/{room}", "/docs", "/openapi.json", "/static/{path}"):
            self.assertNotIn(hidden, doc["paths"])


class NoDocs(unittest.TestCase):
    def test_no_docs_flag(self):
        with Server("apps/demo", "--no-docs") as srv:
            self.assertEqual(get(srv.port, "/openapi.json")[0], 404)
            self.assertEqual(get(srv.port, "/docs")[0], 404)
            self.assertEqual(get(srv.port, "/redoc")[0], 404)
            self.assertEqual(get(srv.port, "/users/3")[0], 200)


class DocsInABrowser(unittest.TestCase):
    def test_swagger_ui_lists_the_demo_and_tries_a_route(self):
        from browser import Browser
        from docs_check import tour
        with Server("apps/demo") as srv, Browser() as browser:
            page = browser.page()
            ops, body = tour(page, "http://127.0.0.1:%d" % srv.port)
            for op in ("GET /users/{id}", "POST /items", "GET /concurrent", "GET /notes",
                       "DELETE /notes/{id}", "GET /events"):
                self.assertIn(op, ops)
            self.assertEqual(json.loads(body), {"id": 7, "name": "user 7"})
            page.pump(0.2)
            self.assertEqual([], page.problems)
            # the browser's request reached the server: Swagger UI is not a mock
            self.assertTrue(srv.wait_log(r'"GET /users/7" 200'))
            # the assets came from luaserve itself (no CDN)
            self.assertTrue(srv.wait_log(r'"GET /docs/assets/swagger-ui-bundle.js" 200'))


class ReDocInABrowser(unittest.TestCase):
    def test_redoc_lists_every_operation_of_the_document(self):
        from browser import Browser
        with Server("apps/demo") as srv, Browser() as browser:
            doc = json.loads(get(srv.port, "/openapi.json")[2])
            want = sorted("operation/" + op["operationId"]
                          for item in doc["paths"].values() for op in item.values())
            self.assertGreater(len(want), 20)
            page = browser.page()
            page.navigate("http://127.0.0.1:%d/redoc" % srv.port)
            count = "document.querySelectorAll('[data-section-id^=\"operation/\"]').length"
            page.wait_for("%s >= %d" % (count, len(want)), timeout=30)
            shown = page.evaluate("Array.from(document.querySelectorAll("
                                  "'[data-section-id^=\"operation/\"]')).map("
                                  "e => e.getAttribute('data-section-id'))")
            self.assertEqual(want, sorted(shown))
            # GET /users/{id}: its path and its typed parameter, as ReDoc shows them
            text = page.evaluate("document.querySelector("
                                 "'[data-section-id=\"operation/get_users_id\"]').innerText")
            self.assertIn("/users/{id}", text)
            self.assertIn("integer", text)
            self.assertEqual("luaserve demo - ReDoc", page.evaluate("document.title"))
            page.pump(0.2)
            # the one problem: the logo the bundle asks of cdn.redoc.ly, refused
            # by the page's Content-Security-Policy (and its failed load)
            others = [p for p in page.problems if "cdn.redoc.ly" not in p]
            if others == ["load failed: "]:   # the refused load, which names no URL
                others = []
            self.assertEqual([], others)
            self.assertTrue(srv.wait_log(r'"GET /redoc/assets/redoc.standalone.js" 200'))
            self.assertTrue(srv.wait_log(r'"GET /openapi.json" 200'))


if __name__ == "__main__":
    unittest.main()
