"""Many runs: reproduce (SC-004), seed sweeps, tuning studies."""
