from pkg import __version__
from pkg.sub._impl import run
import pkg.b as b
def f():
    from pkg.b import _secret
    return b._secret
