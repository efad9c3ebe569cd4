def f():
    from pkg import e
