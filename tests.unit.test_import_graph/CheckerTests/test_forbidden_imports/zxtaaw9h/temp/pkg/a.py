def f():
    from lab.natlab import NatLab
