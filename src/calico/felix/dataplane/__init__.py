"""The dataplane driver: programs iptables, ipsets, routes and interfaces from calc messages."""
