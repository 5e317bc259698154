"""Training runs: collectors, the loop, the run of one or more agents, evaluation, seeding, devices."""
