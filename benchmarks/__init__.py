"""The benchmark scripts and the study package they share (`benchmarks.study`); not part of the installed library."""
