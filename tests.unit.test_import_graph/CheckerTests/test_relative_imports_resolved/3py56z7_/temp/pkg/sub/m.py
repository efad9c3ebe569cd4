from ..top import _hidden
from . import n
