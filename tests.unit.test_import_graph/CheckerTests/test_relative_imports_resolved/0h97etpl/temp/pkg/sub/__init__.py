from . import m
