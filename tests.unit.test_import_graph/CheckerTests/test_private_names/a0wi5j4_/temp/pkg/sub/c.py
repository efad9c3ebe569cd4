from pkg.sub._impl import run
