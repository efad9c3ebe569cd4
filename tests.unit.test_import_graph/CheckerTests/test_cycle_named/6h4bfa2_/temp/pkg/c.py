from pkg.a import thing
