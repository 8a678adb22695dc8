"""etcd3gw (Python, etcd's JSON gateway) against one server: put/get, create, replace,
delete, prefixes, leases, watch. Exits non-zero with the failing step. Run by
tests/etcd3gw.rs against a real etcd and against weft."""
import sys
import threading

import etcd3gw

host, port = sys.argv[1], int(sys.argv[2])
c = etcd3gw.client(host=host, port=port, timeout=10)


def check(what, cond):
    if not cond:
        print("FAILED:", what, file=sys.stderr)
        sys.exit(1)


check("status has a version", "version" in c.status())
check("members", len(c.members()) >= 1)
check("put", c.put("py/a", "1"))
check("get", c.get("py/a") == [b"1"])
check("get missing", c.get("py/missing") == [])
check("create new", c.create("py/b", "2") is True)
check("create existing", c.create("py/b", "3") is False)
check("replace ok", c.replace("py/a", "1", "10") is True)
check("replace stale", c.replace("py/a", "1", "11") is False)
check("get after replace", c.get("py/a") == [b"10"])
vals = sorted(v for v, _ in c.get_prefix("py/"))
check("prefix", vals == [b"10", b"2"])
lease = c.lease(ttl=30)
check("lease id", lease.id != 0)
check("put with lease", c.put("py/leased", "x", lease=lease))
check("lease ttl", 0 < lease.ttl() <= 30)
check("lease keys", lease.keys() == [b"py/leased"])
check("lease refresh", lease.refresh() > 0)
check("lease revoke", lease.revoke())
check("leased key gone", c.get("py/leased") == [])
check("delete", c.delete("py/b") is True)
check("delete missing", c.delete("py/b") is False)
events, cancel = c.watch("py/w")
got = []
t = threading.Thread(target=lambda: got.append(next(iter(events))))
t.start()
import time
time.sleep(0.5)
c.put("py/w", "seen")
t.join(10)
cancel()
check("watch event", got and got[0]["kv"]["value"] == b"seen")
check("delete prefix", c.delete_prefix("py/"))
print("ok")
