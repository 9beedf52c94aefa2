"""Controlled egress: sandboxes of a profile with an `egress` allow-list reach the outside only
through the egress proxy (two Squid processes the gateway runs), on an internal network of their own.

- network.py: the egress network's shape (shared with the socket proxy, which accepts exactly it)
- addresses.py: the sandbox addresses the broker hands out, and who holds each
- squid_conf.py, squid.py: the proxy's configuration and processes
- acl_helper.py: the decision point Squid asks (standard library only; files.py ships it)
- log_lines.py, audit_tail.py: one audit event per connection, from the two proxies' logs
"""
