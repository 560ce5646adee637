"""Fuzzing campaigns (issue 13): inputs a careless user or a hostile guest or
hypervisor could give svmsim, checked against its invariants."""
