"""The Python sample app: answers every GET with greetings from its two
dependencies and says which Python runs it, from which environment."""

import os
import platform
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

import flynn_extra
import flynn_greeting


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = (
            f"hello from the python app: {flynn_greeting.hello()}, {flynn_extra.hello()}, "
            f"python {platform.python_version()} in {sys.prefix}\n"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


print(f"web starting on port {os.environ['PORT']}")
HTTPServer(("", int(os.environ["PORT"])), Handler).serve_forever()
