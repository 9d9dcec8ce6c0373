"""The host layer: the local-IP link (netlink) and the NOTRACK/ACCEPT rules.

``host.HostNetwork`` is what the agent uses; ``rules.notrack_rules`` is the
rule set as data; ``firewall`` holds the iptables-legacy, iptables-nft and
nftables backends; ``commands`` the one-shot ``setup``/``teardown`` commands.
Importing the package imports none of them: a serving process without host
networking only needs ``ifaddrs``.
"""
