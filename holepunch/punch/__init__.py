"""Hole punching outside ICE's UDP checks: TCP simultaneous open
(:mod:`holepunch.punch.tcp`, carried in the ICE offer by
:mod:`holepunch.punch.tcpsession`) and the one-sided UDP punch toward a peer known by its
address (:mod:`holepunch.punch.udp`)."""
