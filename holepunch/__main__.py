"""``python -m holepunch`` is the ``holepunch`` command."""

from holepunch.cli import main

raise SystemExit(main())
