"""Real HTTP servers for the tests: uvicorn in a thread, on a free loopback port.

The demo's helper is the one implementation (it creates the listening socket
with IPPROTO_TCP, so accepted connections get TCP_NODELAY: no 40 ms Nagle +
delayed-ACK stalls on reused connections).
"""

from __future__ import annotations

from resilience.demo._harness import serve as serve_in_thread

__all__ = ["serve_in_thread"]
