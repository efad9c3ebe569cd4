class A:
    def __init__(self):
        self._x = 1
    def _hook(self):
        pass
    def __eq__(self, other):
        return self._x == other._x
