"""Fleet mode: sandboxes spread over several Docker hosts, listed in a hosts file.

`hosts` reads the file, `placement` chooses a host (weighted rendezvous hashing), `health` says
which hosts are up, `backend.FleetBackend` is the broker's Backend over all of them and `monitor`
probes them and cleans up after a host that comes back.
"""
