"""``nodecache bench-client``: measure a pod's DNS in a real cluster, around and through the cache.

It runs inside an ordinary pod (``manifests/bench/``) and asks the targets it
is given (the cluster DNS Service IP, the node cache IP) what the pod's
applications ask:

* ``resolv`` reads the pod's resolv.conf (search list, ndots) and expands a name
  into the queries glibc sends for it;
* ``names`` builds the sample: the names a pod always has, SRV and PTR walks
  of the cluster DNS, an optional list of services or a names file, and fresh
  names that no cache can hold;
* ``loadgen`` is an open-loop UDP load generator on asyncio: queries leave at
  a fixed rate whatever the answers do, each timed from its own send;
* ``lookup`` times whole search-path lookups as an application sees them;
* ``settings`` holds the targets, rates, sizes and the time budget, under a hard
  rate cap; ``runner`` runs the phases for each target within them, and stops
  at once on SIGTERM/SIGINT with what it has;
* ``stats`` sums a run up; ``report``, ``plot`` and ``png`` write the Markdown
  table, the JSON and the PNG plots (a small encoder of our own: the image
  carries no matplotlib);
* ``command`` is the click command, registered in ``nodecache.cli``.
"""
