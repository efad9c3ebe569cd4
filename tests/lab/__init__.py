"""NAT lab tests: real kernel NATs in network namespaces (the top-level ``lab`` package);
they need root, ``ip`` and ``nft`` and skip with a one-line reason elsewhere."""
