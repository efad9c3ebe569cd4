def f(a, sock):
    a._hook()
    return sock._library_internal
