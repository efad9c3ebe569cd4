"""The ``twistd holepunch`` daemon: options and service tree (:mod:`holepunch.daemon.tap`),
HTTP pages (:mod:`holepunch.daemon.http`), Prometheus metrics
(:mod:`holepunch.daemon.metrics`), status (:mod:`holepunch.daemon.status`) and NAT
discovery at start-up (:mod:`holepunch.daemon.natservice`)."""
