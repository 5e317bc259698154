"""Pure math: the policy network and the algorithms (losses, GAE, updates)."""
