"""What both stacks must compute alike: axis letters, shared numerics, mixed precision, the parity bound."""
