from .. import sub
