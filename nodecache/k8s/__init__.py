"""Kubernetes glue that needs no API server: what node-cache does around CoreDNS.

* :mod:`.template`: render ``Corefile.nodelocal`` (placeholders, stub-domain blocks);
* :mod:`.resolvconf`: the node's resolvers, past systemd-resolved's stub;
* :mod:`.kubedns`: the mounted ``kube-dns`` ConfigMap and its watcher.

All of it is pure or reads files it is given; the agent decides when to call it.
"""
