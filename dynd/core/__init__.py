"""The pure core: no I/O, no clocks, no threads. Events in, effects out; time and randomness passed in."""
