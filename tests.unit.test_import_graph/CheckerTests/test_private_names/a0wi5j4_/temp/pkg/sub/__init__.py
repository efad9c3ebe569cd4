import pkg.b
X = pkg.b._secret
from . import _impl
