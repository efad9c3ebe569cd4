"""Unit tests: no root, no network namespace, no browser; fakes, in memory, task.Clock,
or a quick socket on 127.0.0.1."""
